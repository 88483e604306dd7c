#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: install test dependencies, check
# formatting and lints, build the workspace (the tests run the real binaries), run every test,
# then the benchmark harness in smoke mode.
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

# The benchmark harness in smoke mode (seconds; the debug build; no peers installed): it must not
# rot. Timing targets are reported, never asserted here; a failed or wrong answer fails the run.
bench_out="$CARGO_TARGET_DIR/bench-smoke"
mkdir -p "$bench_out"
# `all` measures two configurations and the burst; the peers are listed (as not installed when
# they are missing) but not run; the block and the plots go to the smoke dir, not the repo.
for bench in process wasm all observe; do
  extra=()
  if [[ "$bench" == all ]]; then
    extra=(--only bare-hyper,nimbus-wasm --markdown "$bench_out/all.md" --plots "$bench_out/plots")
  fi
  if ! cargo run -q --locked -p nimbus-bench -- "$bench" --quick --runs 1 "${extra[@]}" \
    --nimbus "$CARGO_TARGET_DIR/debug/nimbus" --out "$bench_out/$bench.json" >"$bench_out/$bench.txt" 2>&1; then
    cat "$bench_out/$bench.txt"
    echo "scripts/test.sh: the $bench benchmark smoke run failed (output above)" >&2
    exit 1
  fi
  echo "benchmark smoke: $bench ok ($bench_out/$bench.txt)"
done
