#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: install test dependencies, check
# formatting, lints, docs, dependency hygiene and licenses, the Kubernetes manifests, build the
# workspace (the tests run the real binaries), run every test, then the benchmark harness in
# smoke mode.
#
#   scripts/test.sh          everything (what .ci/run runs)
#   scripts/test.sh --fast   the inner loop: fmt, clippy and the unit tests (every crate's own
#                            tests, the manifest UI tests and the tidy rules) — no Node, Python,
#                            Chromium or black-box tests of the binary
# Any other arguments go to `cargo nextest run` (e.g. a test filter).
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
if [[ "${1:-}" == "--fast" ]]; then
  fast=1
  shift
fi

# wasmtime and friends are heavy: keep build artefacts outside the clone so later runs reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nimbus/target}"
# That directory outlives runs, and cargo does not delete incremental state it has stopped
# using: 40 GB had piled up there and filled the disk. State no build touched for three days
# goes (losing it only makes the next build of that crate a full one).
if [[ -d "$CARGO_TARGET_DIR/debug/incremental" ]]; then
  find "$CARGO_TARGET_DIR/debug/incremental" -mindepth 1 -maxdepth 1 -mtime +3 -exec rm -rf {} +
fi
# Machines of this kind have been seen with a few hundred MB free, and a full disk fails tests
# far from the cause (SQLite's "database or disk is full"). Short of space, all incremental
# state goes (builds of nimbus's own crates then start from scratch; dependencies stay built),
# and the run says how much is free either way.
mkdir -p "$CARGO_TARGET_DIR"
free_mb() { df -Pm "$CARGO_TARGET_DIR" | awk 'NR == 2 { print $4 }'; }
if (($(free_mb) < ${NIMBUS_MIN_FREE_MB:-10240})); then
  echo "scripts/test.sh: only $(free_mb) MB free; dropping the incremental state and smoke outputs under $CARGO_TARGET_DIR" >&2
  rm -rf "$CARGO_TARGET_DIR/debug/incremental" "$CARGO_TARGET_DIR/bench-smoke"
  if (($(free_mb) < 2048)); then
    echo "scripts/test.sh: still only $(free_mb) MB free: the build and tests need several GB; free some, or point CARGO_TARGET_DIR at a larger disk" >&2
  fi
fi
echo "scripts/test.sh: $(free_mb) MB free for the build and the tests ($CARGO_TARGET_DIR)"
cache="${NIMBUS_CACHE:-$HOME/.cache/nimbus}"
export NIMBUS_TEST_PYTHONPATH="${NIMBUS_TEST_PYTHONPATH:-$cache/py}"
export PATH="$cache/tools/bin:$PATH"

if [[ $fast == 1 ]]; then
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets --locked -- -D warnings
  # The black-box tests are the `nimbus` package's test targets; everything else is fast.
  exec cargo nextest run --workspace --locked --no-fail-fast -E 'not (package(nimbus) & kind(test))' "$@"
fi

scripts/test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# Dependencies declared but not used (cargo-shear reads the code, so it needs no build).
cargo shear
# Licenses, banned crates and sources. Not advisories: they need a network fetch of the RustSec
# database that CI cannot make (deny.toml says so).
deny_log="$CARGO_TARGET_DIR/cargo-deny.log"
if ! cargo deny --offline --locked check licenses bans sources >"$deny_log" 2>&1; then
  cat "$deny_log"
  echo "scripts/test.sh: cargo deny found a problem (output above)" >&2
  exit 1
fi
# deploy/kubernetes/: every manifest against the Kubernetes API schemas (strict), the
# kustomization's file list, nats.conf (a second; no build needed).
scripts/check-kubernetes.py manifests
cargo build --workspace --all-targets --locked
# The Deployment's `nimbus up` flags exist, and its app ConfigMap deploys and serves (seconds).
scripts/check-kubernetes.py flags "$CARGO_TARGET_DIR/debug/nimbus"
cargo nextest run --workspace --locked --no-fail-fast "$@"

# The benchmark harness in smoke mode (seconds; the debug build; no peers installed): it must not
# rot. Timing targets are reported, never asserted here; a failed or wrong answer fails the run.
bench_out="$CARGO_TARGET_DIR/bench-smoke"
mkdir -p "$bench_out"
# `all` measures two configurations and the burst; the peers are listed (as not installed when
# they are missing) but not run; the block and the plots go to the smoke dir, not the repo.
# `storage` compares with moto only where scripts/bench-tools.sh installed it (about 2 s more);
# so does `events` (SQS; about 15 s more: moto is slow with batches at c=32), which also runs a
# queue trigger, bucket-triggered starts and the idle-CPU window (about 30 s in all).
# `edge` runs its nginx row only where nginx is installed (nginx-light, scripts/bench-tools.sh) and
# says so otherwise.
# `cluster` starts one `nimbus up`, then three NATS servers (from scripts/test-deps.sh) and three
# `nimbus up --cluster` nodes: accepts and two deploys on each side (about 25 s).
# `stream` streams server-sent events from a wasm, a Node and a Python function (and from
# `wasmtime serve` where scripts/bench-tools.sh installed it; about 10 s).
for bench in process wasm all observe storage events edge cluster stream; do
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
