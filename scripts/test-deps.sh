#!/usr/bin/env bash
# Install what the test suite needs, idempotently, into a cache outside the clone:
#   - awslambdaric and boto3 (PyPI) for the official-runtime-client and AWS SDK tests, and
#     prometheus_client, whose OpenMetrics parser reads /metrics in the tests;
#   - checks for node, python3 and cargo-nextest.
# Re-running it is cheap: nothing is installed twice.
set -euo pipefail

cache="${NIMBUS_CACHE:-$HOME/.cache/nimbus}"
py="$cache/py"
mkdir -p "$cache"

need() { command -v "$1" >/dev/null 2>&1 || { echo "test-deps: $1 is required: $2" >&2; exit 1; }; }
need python3 "install Python 3 (apt-get install python3)"
need node "install Node.js 18 or newer (apt-get install nodejs)"
need cargo "install Rust with rustup"

if ! PYTHONPATH="$py" python3 -c "import awslambdaric, boto3, prometheus_client" >/dev/null 2>&1; then
  echo "test-deps: installing awslambdaric, boto3 and prometheus_client into $py" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --upgrade --target "$py" \
    "awslambdaric>=2.0" "boto3>=1.34" "prometheus_client>=0.20"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test-deps: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
