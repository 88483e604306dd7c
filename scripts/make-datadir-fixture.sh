#!/usr/bin/env bash
# Make the data-dir fixture of crates/nimbus/tests/compat.rs: run a given nimbus binary (the
# release whose storage formats must keep working) on the fixture app, deploy twice, invoke
# every trigger, leave a dead-lettered event, stop it cleanly, and keep the data dir without
# its caches. Usage: scripts/make-datadir-fixture.sh NIMBUS_BINARY [FIXTURE_DIR]
# (default FIXTURE_DIR: crates/nimbus/tests/fixtures/datadir-0.1, holding app/ and data/).
# Needs node, python3 and curl. Talks only to 127.0.0.1.
set -euo pipefail
nimbus="$(realpath "${1:?usage: $0 NIMBUS_BINARY [FIXTURE_DIR]}")"
fixture="$(realpath "${2:-$(dirname "$0")/../crates/nimbus/tests/fixtures/datadir-0.1}")"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

cp -r "$fixture/app" "$work/app"
data="$work/data"
"$nimbus" up "$work/app" --listen 127.0.0.1:0 --data-dir "$data" >"$work/up.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  [[ -s "$data/server.url" ]] && curl -fsS "$(cat "$data/server.url")/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
url="$(cat "$data/server.url")"
export NIMBUS_SERVER="$url" NIMBUS_TOKEN="$(cat "$data/admin.token")"

curl -fsS "$url/greet/ada" >/dev/null
curl -fsS "$url/hello/fixture" >/dev/null
curl -fsS -X POST "$url/jobs" -d '{"text":"ok"}' >/dev/null
curl -fsS -X POST "$url/jobs" -d '{"text":"fail"}' >/dev/null

# Version 2: the same app with another greeting, deployed through the management API.
sed -i 's/GREETING = "Hello"/GREETING = "Howdy"/' "$work/app/nimbus.toml"
"$nimbus" deploy "$work/app"
curl -fsS "$url/greet/grace" >/dev/null
curl -fsS -X POST "$url/2015-03-31/functions/greet/invocations?Qualifier=1" -d '{"pathParameters":{"name":"v1"}}' >/dev/null

# Wait until the failed event is dead-lettered and every record is written.
for _ in $(seq 1 300); do
  "$nimbus" dlq ls | grep -q shout && [[ "$("$nimbus" invocations --limit 100 | wc -l)" -ge 7 ]] && break
  sleep 0.1
done
"$nimbus" dlq ls | grep -q shout || { cat "$work/up.log"; echo "no dead-lettered event" >&2; exit 1; }
kill -TERM "$pid"
wait "$pid" || true

# Keep what a release stores; drop caches and files of a running server.
rm -rf "$data"/wasm-cache "$data"/runtime "$data"/uploads "$data"/server.url "$data"/tmp "$data"/scratch
rm -rf "$fixture/data"
cp -r "$data" "$fixture/data"
echo "wrote $fixture/data:"
find "$fixture/data" -maxdepth 2 | sort
