#!/usr/bin/env bash
# Rebuild the WebAssembly components committed in the repo (wasi:http/proxy guests):
#
#   rust    tests/fixtures/wasm/conformance.wasm              tests/fixtures/wasm/guest-rust (wasip2 crate)
#           tests/fixtures/wasm/kv.wasm                       tests/fixtures/wasm/guest-kv (wasip2, wit-bindgen: wasi:keyvalue)
#           examples/wasm-hello/functions/hello/hello.wasm    examples/wasm-hello/hello-rs
#   js      examples/wasm-edge-js/functions/geo/geo.wasm      componentize-js 0.23.0 (npm)
#   python  examples/wasm-jwt-py/functions/auth/auth.wasm     componentize-py 0.25.1 (PyPI)
#   bench-js  crates/nimbus-bench/guests/hello-js/hello.wasm  componentize-js (the JS hello of `nimbus-bench all`)
#   bench-py  crates/nimbus-bench/guests/hello-py/hello.wasm  componentize-py (the Python hello of `nimbus-bench all`)
#
# Usage: scripts/build-wasm-fixtures.sh [rust] [js] [python] [bench-js] [bench-py]   (no argument: all of them)
#
# Tools are installed once, pinned, into ${NIMBUS_TOOLS:-$HOME/.cache/nimbus/wasm-tools}
# (npm packages from tests/fixtures/wasm/tools/package-lock.json, componentize-py with
# pip --target); only the npm registry and PyPI are contacted, and only when a pinned
# version is missing. The WASI WIT is vendored in tests/fixtures/wasm/wit (see its
# README.md for where it comes from and why the JS build relabels it 0.2.10).
# Each component is built into a temporary directory and moved into place only when the
# build succeeded, so a failed run leaves the committed file alone. Rerunnable.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${NIMBUS_TOOLS:-$HOME/.cache/nimbus/wasm-tools}"
wit="$root/tests/fixtures/wasm/wit"
npm_spec="$root/tests/fixtures/wasm/tools"

log() { echo "build-wasm-fixtures: $*" >&2; }
die() { log "$*"; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required: $2"; }

usage() {
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

parts=("$@")
if [[ ${#parts[@]} -eq 0 ]]; then
  parts=(rust js python bench-js bench-py)
fi
for part in "${parts[@]}"; do
  case "$part" in
    rust | js | python | bench-js | bench-py) ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown part '$part': choose among rust, js, python, bench-js, bench-py" ;;
  esac
done

work="$(mktemp -d "${TMPDIR:-/tmp}/nimbus-wasm-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

now() { date +%s.%N 2>/dev/null || date +%s; }

# `install_component BUILT DEST LABEL START`: check a freshly built component, move it
# into the repo, and say how big it is and how long the build took.
install_component() {
  local built="$1" dest="$2" label="$3" start="$4"
  [[ -s "$built" ]] || die "$label: the build produced no component"
  check_component "$built" "$label"
  mkdir -p "$(dirname "$dest")"
  mv -f "$built" "$dest"
  local bytes seconds
  bytes="$(wc -c <"$dest" | tr -d ' ')"
  seconds="$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
  log "$label: ${dest#"$root"/} ($((bytes / 1024)) KiB) built in ${seconds}s"
}

# The host instantiates a component through wasi:http/proxy: it must export
# wasi:http/incoming-handler@0.2.x. Prints the component's WASI imports and exports when
# jco is installed (the js part installs it).
check_component() {
  local file="$1" label="$2" jco="$tools/npm/node_modules/.bin/jco"
  [[ -x "$jco" ]] || return 0
  local witText
  witText="$("$jco" wit "$file")" || die "$label: jco could not read the component's WIT"
  grep -Eq '^ *export wasi:http/incoming-handler@0\.2\.[0-9]+;' <<<"$witText" ||
    die "$label: the component does not export wasi:http/incoming-handler@0.2.x"
  log "$label: exports $(grep -Eo 'wasi:http/incoming-handler@[0-9.]+' <<<"$witText" | head -n1);" \
    "imports $(grep -E '^ *import ' <<<"$witText" | sed -E 's/^ *import //; s/;$//' | tr '\n' ' ')"
}

# --- tools -------------------------------------------------------------------------

# componentize-js and jco, at the versions of the committed package-lock.json.
install_npm_tools() {
  need node "install Node.js 18 or newer"
  need npm "install npm (it comes with Node.js)"
  local dir="$tools/npm" want
  want="$(sha256 "$npm_spec/package-lock.json")"
  if [[ -x "$dir/node_modules/.bin/componentize-js" && -f "$dir/.lock.sha256" &&
    "$(cat "$dir/.lock.sha256")" == "$want" ]]; then
    return
  fi
  log "installing componentize-js and jco into $dir"
  mkdir -p "$dir"
  cp "$npm_spec/package.json" "$npm_spec/package-lock.json" "$dir/"
  # `npm install` from the lock, not `npm ci`: npm 10/11 leave the unpublished optional
  # platform packages of jco-node-fs and rolldown out of the lock, and `npm ci` then
  # refuses it as out of sync. `npm install` installs the locked versions all the same.
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error >&2
  echo "$want" >"$dir/.lock.sha256"
}

# componentize-py has no dependencies: one pinned wheel, in a directory of its own.
install_componentize_py() {
  need python3 "install Python 3.9 or newer"
  local dir="$tools/componentize-py-$COMPONENTIZE_PY_VERSION"
  if [[ -d "$dir/componentize_py-$COMPONENTIZE_PY_VERSION.dist-info" ]]; then
    return
  fi
  log "installing componentize-py $COMPONENTIZE_PY_VERSION into $dir"
  rm -rf "$dir.partial"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    --no-warn-script-location --target "$dir.partial" "componentize-py==$COMPONENTIZE_PY_VERSION" >&2
  rm -rf "$dir"
  mv "$dir.partial" "$dir"
}

componentize_py() {
  PYTHONPATH="$tools/componentize-py-$COMPONENTIZE_PY_VERSION" \
    python3 -c 'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' "$@"
}

# --- rust --------------------------------------------------------------------------

build_rust() {
  need cargo "install Rust with rustup"
  if command -v rustup >/dev/null 2>&1; then
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
  fi
  local crate lib dest start
  # crate dir, library name, destination
  for spec in \
    "tests/fixtures/wasm/guest-rust nimbus_wasm_guests tests/fixtures/wasm/conformance.wasm" \
    "tests/fixtures/wasm/guest-kv nimbus_wasm_kv_guest tests/fixtures/wasm/kv.wasm" \
    "examples/wasm-hello/hello-rs wasm_hello examples/wasm-hello/functions/hello/hello.wasm"; do
    read -r crate lib dest <<<"$spec"
    start="$(now)"
    # Each guest crate is its own workspace with its own lock file; the target dir is kept
    # out of the repo so rebuilds are incremental.
    CARGO_TARGET_DIR="$tools/rust-target" cargo build --quiet --release --locked \
      --target wasm32-wasip2 --manifest-path "$root/$crate/Cargo.toml"
    cp "$tools/rust-target/wasm32-wasip2/release/$lib.wasm" "$work/$lib.wasm"
    install_component "$work/$lib.wasm" "$root/$dest" "rust ($crate)" "$start"
  done
}

# --- js ----------------------------------------------------------------------------

# The 0.2.10 view of the vendored 0.2.12 WIT that componentize-js 0.23.0 needs (see
# tests/fixtures/wasm/wit/README.md): relabel the packages and undo the one
# stabilisation 0.2.12 made. Refuses to guess if the vendored WIT has anything newer.
wit_0_2_10() {
  local out="$1" f
  mkdir -p "$out/deps"
  for f in "$wit"/deps/*.wit; do
    sed -e '/@since(version = 0\.2\.12)/{N;s/@since(version = 0\.2\.12)\(\n *exit-with-code:\)/@unstable(feature = cli-exit-with-code)\1/;}' \
      -e 's/@0\.2\.12/@0.2.10/g' "$f" >"$out/deps/$(basename "$f")"
  done
  if grep -nE '0\.2\.(1[1-9]|[2-9][0-9])' "$out"/deps/*.wit >&2; then
    die "js: the vendored WIT has features newer than WASI 0.2.10 (above); teach wit_0_2_10 about them"
  fi
}

build_js() {
  install_npm_tools
  local app="$root/examples/wasm-edge-js" start
  start="$(now)"
  wit_0_2_10 "$work/js-wit"
  cp "$app"/src/wit/*.wit "$work/js-wit/"
  "$tools/npm/node_modules/.bin/componentize-js" "$app/src/main.js" \
    --wit "$work/js-wit" --world-name geo -o "$work/geo.wasm" >&2
  install_component "$work/geo.wasm" "$app/functions/geo/geo.wasm" js "$start"
}

# --- python ------------------------------------------------------------------------

build_python() {
  install_componentize_py
  local app="$root/examples/wasm-jwt-py" start
  start="$(now)"
  # From a copy: componentize-py's build-time interpreter leaves __pycache__ beside the source.
  cp -R "$app/src" "$work/py-src"
  componentize_py -d "$wit" -w wasi:http/proxy@0.2.12 \
    componentize app -p "$work/py-src" -o "$work/auth.wasm" >&2
  install_component "$work/auth.wasm" "$app/functions/auth/auth.wasm" python "$start"
}

# --- the hello components of `nimbus-bench all` -------------------------------------

build_bench_js() {
  install_npm_tools
  local dir="$root/crates/nimbus-bench/guests/hello-js" start
  start="$(now)"
  wit_0_2_10 "$work/bench-js-wit"
  cp "$dir"/wit/*.wit "$work/bench-js-wit/"
  "$tools/npm/node_modules/.bin/componentize-js" "$dir/hello.js" \
    --wit "$work/bench-js-wit" --world-name hello -o "$work/bench-hello-js.wasm" >&2
  install_component "$work/bench-hello-js.wasm" "$dir/hello.wasm" bench-js "$start"
}

build_bench_py() {
  install_componentize_py
  local dir="$root/crates/nimbus-bench/guests/hello-py" start
  start="$(now)"
  mkdir -p "$work/bench-py-src"
  cp "$dir/app.py" "$work/bench-py-src/"
  componentize_py -d "$wit" -w wasi:http/proxy@0.2.12 \
    componentize app -p "$work/bench-py-src" -o "$work/bench-hello-py.wasm" >&2
  install_component "$work/bench-hello-py.wasm" "$dir/hello.wasm" bench-py "$start"
}

# check_component needs jco, which the js part installs; a python-only run on a machine
# without it skips the check rather than installing 150 npm packages for it.
for part in "${parts[@]}"; do
  "build_${part//-/_}"
done
