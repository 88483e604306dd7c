#!/usr/bin/env bash
# Write docs/dashboard.png: start nimbus on examples/hello, send it real traffic for a while
# (NIMBUS_SCREENSHOT_TRAFFIC_SECS, default 120), sign in to the dashboard in headless Chromium
# and photograph a function's page. Runs the ignored `screenshot` test in
# crates/nimbus/tests/dashboard.rs, so it uses the same browser driver as the dashboard tests.
#   scripts/dashboard-screenshot.sh [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/nimbus/target}"
out="${1:-docs/dashboard.png}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
command -v chromium >/dev/null 2>&1 || [ -n "${NIMBUS_CHROMIUM:-}" ] || scripts/test-deps.sh

NIMBUS_SCREENSHOT_OUT="$out" cargo test --locked -p nimbus --test dashboard -- --ignored --exact screenshot --nocapture
echo "dashboard-screenshot: wrote $out"
