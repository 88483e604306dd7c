#!/usr/bin/env bash
# Installs the peers the benchmarks compare nimbus with, outside the repo, idempotently:
#   wasmtime-cli 48.0.8 (for `wasmtime serve` in `nimbus-bench wasm`)
# into ${NIMBUS_BENCH_TOOLS:-$HOME/.cache/nimbus/bench-tools}/bin. Not part of CI.
#
#   scripts/bench-tools.sh          # install what is missing (a first wasmtime build takes ~20 min on 2 cores)
#
# wasmtime is pinned to 48.0.8: 49.x needs rustc 1.96 and 50.x needs 1.97 (FIELD-NOTES.md), and
# the bench compares it with the wasmtime 48 that nimbus embeds.
set -euo pipefail

TOOLS="${NIMBUS_BENCH_TOOLS:-$HOME/.cache/nimbus/bench-tools}"
WASMTIME_VERSION=48.0.8

have_version() { # BIN VERSION: does BIN --version mention VERSION?
  [ -x "$1" ] && "$1" --version 2>/dev/null | grep -qF " $2"
}

mkdir -p "$TOOLS"
if have_version "$TOOLS/bin/wasmtime" "$WASMTIME_VERSION"; then
  echo "wasmtime $WASMTIME_VERSION: already installed ($TOOLS/bin/wasmtime)"
else
  command -v cargo >/dev/null || { echo "bench-tools: cargo is not on PATH; install Rust (stable) first" >&2; exit 1; }
  echo "wasmtime $WASMTIME_VERSION: installing into $TOOLS (cargo install, ~20 min on 2 cores)"
  # A target dir of its own, so the build never competes with the project's.
  CARGO_TARGET_DIR="$TOOLS/target" cargo install wasmtime-cli --locked --version "$WASMTIME_VERSION" --root "$TOOLS"
  rm -rf "$TOOLS/target"
  have_version "$TOOLS/bin/wasmtime" "$WASMTIME_VERSION" || {
    echo "bench-tools: $TOOLS/bin/wasmtime does not report $WASMTIME_VERSION after the install" >&2
    exit 1
  }
fi
"$TOOLS/bin/wasmtime" --version
