#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: install test dependencies, check
# formatting and lints, build the workspace (the tests run the real binaries), run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# wasmtime and friends are heavy: keep build artefacts outside the clone so later runs reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nimbus/target}"
export NIMBUS_TEST_PYTHONPATH="${NIMBUS_TEST_PYTHONPATH:-${NIMBUS_CACHE:-$HOME/.cache/nimbus}/py}"

scripts/test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --locked --no-fail-fast "$@"
