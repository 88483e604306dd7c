#!/usr/bin/env bash
# Installs the peers the benchmarks compare nimbus with, outside the repo, idempotently, into
# ${NIMBUS_BENCH_TOOLS:-$HOME/.cache/nimbus/bench-tools}. Not part of CI: `nimbus-bench all`
# reports every peer that is missing as "not installed" and goes on without it.
#
#   scripts/bench-tools.sh            # install what is missing (a first run takes ~25 min on 2 cores)
#   scripts/bench-tools.sh --check    # say what is installed, install nothing
#
# What, from where:
#   wasmtime-cli 48.0.8   crates.io, `cargo install`  -> bin/wasmtime        (`wasmtime serve`)
#   workerd, serverless 3.40.0 + serverless-offline 13.9.0
#                         npm, from crates/nimbus-bench/peers/npm/package-lock.json -> npm/node_modules
#   cargo-lambda 1.9.2    PyPI (a prebuilt binary in the wheel), pip --target -> pip/bin/cargo-lambda
#   the hello function cargo-lambda serves (crates/nimbus-bench/peers/lambda-hello), built once
#                         into lambda-target/ so that `cargo lambda watch` starts without compiling
#   nginx-light, wrk      apt-get (system packages; nginx is never started as a service by the bench)
#   moto[server] 5.2.5    PyPI, pip --target -> moto/ (`python3 -m moto.server`, the S3 mock that
#                         `nimbus-bench storage` compares the object store with)
#
# wasmtime is pinned to 48.0.8: 49.x needs rustc 1.96 and 50.x needs 1.97, while this toolchain
# is 1.95 (rust-version in Cargo.toml), and the bench compares it with the wasmtime 48 that nimbus
# embeds. serverless-offline 14 needs Serverless Framework v4, which requires an account login:
# v3 + offline 13 work offline.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${NIMBUS_BENCH_TOOLS:-$HOME/.cache/nimbus/bench-tools}"
WASMTIME_VERSION=48.0.8
CARGO_LAMBDA_VERSION=1.9.2
MOTO_VERSION=5.2.5
peers="$root/crates/nimbus-bench/peers"
check_only=false
[[ "${1:-}" == "--check" ]] && check_only=true

log() { echo "bench-tools: $*" >&2; }
have_version() { # BIN VERSION: does BIN --version mention VERSION?
  [ -x "$1" ] && "$1" --version 2>/dev/null | grep -qF " $2"
}
sha256() { sha256sum "$1" | cut -d' ' -f1; }
missing=()

mkdir -p "$TOOLS"

# --- wasmtime serve ----------------------------------------------------------------
if have_version "$TOOLS/bin/wasmtime" "$WASMTIME_VERSION"; then
  log "wasmtime $WASMTIME_VERSION: installed ($TOOLS/bin/wasmtime)"
elif $check_only; then
  missing+=(wasmtime)
else
  command -v cargo >/dev/null || { log "cargo is not on PATH; install Rust (stable) first"; exit 1; }
  log "wasmtime $WASMTIME_VERSION: installing into $TOOLS (cargo install, ~20 min on 2 cores)"
  # A target dir of its own, so the build never competes with the project's.
  CARGO_TARGET_DIR="$TOOLS/target" cargo install wasmtime-cli --locked --version "$WASMTIME_VERSION" --root "$TOOLS"
  rm -rf "$TOOLS/target"
  have_version "$TOOLS/bin/wasmtime" "$WASMTIME_VERSION" || {
    log "$TOOLS/bin/wasmtime does not report $WASMTIME_VERSION after the install"
    exit 1
  }
fi

# --- npm peers: workerd, serverless + serverless-offline ------------------------------
npm_dir="$TOOLS/npm"
want="$(sha256 "$peers/npm/package-lock.json")"
if [[ -f "$npm_dir/.lock.sha256" && "$(cat "$npm_dir/.lock.sha256")" == "$want" &&
  -x "$npm_dir/node_modules/.bin/workerd" && -f "$npm_dir/node_modules/serverless/bin/serverless.js" ]]; then
  log "workerd, serverless, serverless-offline: installed ($npm_dir)"
elif $check_only; then
  missing+=(workerd serverless-offline)
else
  command -v npm >/dev/null || { log "npm is not on PATH; install Node.js 18 or newer"; exit 1; }
  log "workerd, serverless 3.40.0, serverless-offline 13.9.0: installing into $npm_dir (~1 min)"
  mkdir -p "$npm_dir"
  cp "$peers/npm/package.json" "$peers/npm/package-lock.json" "$npm_dir/"
  # `npm install` from the lock, not `npm ci`: npm 11 leaves workerd's optional platform
  # packages for other systems out of the lock, and `npm ci` then refuses it as out of sync;
  # `npm install` installs the locked versions all the same (as scripts/build-wasm-fixtures.sh).
  # workerd ships its binary in a platform package (@cloudflare/workerd-linux-64), so no
  # install script has to download anything.
  npm install --prefix "$npm_dir" --no-audit --no-fund --loglevel=error >&2
  echo "$want" >"$npm_dir/.lock.sha256"
fi

# --- cargo-lambda --------------------------------------------------------------------
pip_dir="$TOOLS/pip"
if [[ -d "$pip_dir/cargo_lambda-$CARGO_LAMBDA_VERSION.dist-info" && -x "$pip_dir/bin/cargo-lambda" ]]; then
  log "cargo-lambda $CARGO_LAMBDA_VERSION: installed ($pip_dir/bin/cargo-lambda)"
elif $check_only; then
  missing+=(cargo-lambda)
else
  log "cargo-lambda $CARGO_LAMBDA_VERSION: installing into $pip_dir (pip --target)"
  rm -rf "$pip_dir.partial"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    --no-warn-script-location --target "$pip_dir.partial" "cargo-lambda==$CARGO_LAMBDA_VERSION" >&2
  rm -rf "$pip_dir"
  mv "$pip_dir.partial" "$pip_dir"
fi
# The function it serves, compiled once (a debug build, as `cargo lambda watch` runs it).
lambda_bin="$TOOLS/lambda-target/debug/lambda-hello"
if [[ -x "$lambda_bin" && "$lambda_bin" -nt "$peers/lambda-hello/src/main.rs" ]]; then
  log "lambda-hello: built ($lambda_bin)"
elif $check_only; then
  missing+=(lambda-hello)
elif [[ -x "$pip_dir/bin/cargo-lambda" ]]; then
  log "lambda-hello: building into $TOOLS/lambda-target (~2 min the first time)"
  CARGO_TARGET_DIR="$TOOLS/lambda-target" cargo build --locked --quiet \
    --manifest-path "$peers/lambda-hello/Cargo.toml" >&2
fi

# --- moto (nimbus-bench storage) -----------------------------------------------------
moto_dir="$TOOLS/moto"
if [[ -d "$moto_dir/moto-$MOTO_VERSION.dist-info" && -f "$moto_dir/moto/server.py" ]]; then
  log "moto $MOTO_VERSION: installed ($moto_dir)"
elif $check_only; then
  missing+=(moto)
else
  log "moto[server] $MOTO_VERSION: installing into $moto_dir (pip --target)"
  rm -rf "$moto_dir.partial"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
    --no-warn-script-location --target "$moto_dir.partial" "moto[server]==$MOTO_VERSION" >&2
  rm -rf "$moto_dir"
  mv "$moto_dir.partial" "$moto_dir"
fi

# --- apt: nginx-light, wrk -------------------------------------------------------------
apt_missing=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || apt_missing+=(nginx-light)
command -v wrk >/dev/null || apt_missing+=(wrk)
if [[ ${#apt_missing[@]} -eq 0 ]]; then
  log "nginx, wrk: installed"
elif $check_only; then
  missing+=("${apt_missing[@]}")
else
  log "apt-get install ${apt_missing[*]}"
  SUDO=""
  [[ "$(id -u)" == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq >&2
  # The package's post-install may try to start the nginx service; the bench runs its own.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_missing[@]}" >&2
fi

if [[ ${#missing[@]} -gt 0 ]]; then
  log "missing: ${missing[*]} (run scripts/bench-tools.sh to install them)"
  exit 1
fi
"$TOOLS/bin/wasmtime" --version
