#!/usr/bin/env bash
# A local nimbus cluster for development: 3 nats-servers (JetStream on, sync_interval: always,
# loopback ports 4222-4224, routes on 6222-6224, monitoring on 8222-8224) and 3 nimbus nodes (node-1..node-3 on
# 127.0.0.1:8081-8083, each with its own data dir) serving APP_DIR.
#
#   scripts/cluster.sh up [APP_DIR]    # start what is not running yet (idempotent)
#   scripts/cluster.sh down            # stop the nodes (gracefully), then the servers
#
# State (configs, data, logs, pid files) lives in ${NIMBUS_CLUSTER_DIR:-/tmp/nimbus-cluster}.
# nats-server is the one scripts/test-deps.sh installs (~/.cache/nimbus/nats), or
# NIMBUS_NATS_SERVER; nimbus is built with `cargo build -p nimbus` when missing (or NIMBUS_BIN).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
state="${NIMBUS_CLUSTER_DIR:-/tmp/nimbus-cluster}"
cache="${NIMBUS_CACHE:-$HOME/.cache/nimbus}"
nats_bin="${NIMBUS_NATS_SERVER:-$cache/nats/bin/nats-server}"
target="${CARGO_TARGET_DIR:-$root/target}"
nimbus_bin="${NIMBUS_BIN:-$target/debug/nimbus}"
urls="nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

nats_up() {
  if [ ! -x "$nats_bin" ]; then
    echo "cluster.sh: no nats-server at $nats_bin: run scripts/test-deps.sh or set NIMBUS_NATS_SERVER" >&2
    exit 1
  fi
  for i in 1 2 3; do
    local dir="$state/nats-$i" pid="$state/nats-$i.pid"
    alive "$pid" && continue
    mkdir -p "$dir"
    local routes=""
    for j in 1 2 3; do [ "$j" = "$i" ] || routes="$routes${routes:+, }\"nats-route://127.0.0.1:$((6221 + j))\""; done
    cat >"$dir/nats.conf" <<EOF
server_name: "n$i"
listen: "127.0.0.1:$((4221 + i))"
http: "127.0.0.1:$((8221 + i))"
jetstream {
  store_dir: "$dir/store"
  sync_interval: "always"
}
cluster {
  name: "nimbus-local"
  listen: "127.0.0.1:$((6221 + i))"
  routes: [$routes]
}
EOF
    "$nats_bin" -c "$dir/nats.conf" >>"$state/nats-$i.log" 2>&1 &
    echo $! >"$pid"
    echo "nats-server n$i on nats://127.0.0.1:$((4221 + i)) (log $state/nats-$i.log)"
  done
}

# Wait (up to 30 s) until every nats-server's JetStream answers (/healthz on its monitoring port).
nats_wait() {
  for i in 1 2 3; do
    local up=""
    for _ in $(seq 300); do
      if curl -sf "http://127.0.0.1:$((8221 + i))/healthz" >/dev/null 2>&1; then up=1; break; fi
      sleep 0.1
    done
    [ -n "$up" ] || { echo "cluster.sh: nats-server n$i did not start; see $state/nats-$i.log" >&2; exit 1; }
  done
}

nimbus_up() {
  local app="$1"
  if [ ! -x "$nimbus_bin" ]; then
    echo "cluster.sh: building nimbus (cargo build -p nimbus)" >&2
    (cd "$root" && cargo build -p nimbus)
  fi
  for i in 1 2 3; do
    local pid="$state/node-$i.pid"
    alive "$pid" && continue
    "$nimbus_bin" up "$app" --listen "127.0.0.1:$((8080 + i))" --data-dir "$state/node-$i" \
      --aws-listen off --cluster "$urls" --node-name "node-$i" >>"$state/node-$i.log" 2>&1 &
    echo $! >"$pid"
    echo "nimbus node-$i on http://127.0.0.1:$((8080 + i)) (log $state/node-$i.log)"
  done
}

# Stop a pid file's process with SIGTERM, waiting up to $2 seconds, then SIGKILL.
stop() {
  local pid_file="$1" wait_s="$2"
  if alive "$pid_file"; then
    local pid
    pid="$(cat "$pid_file")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((wait_s * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
}

case "${1:-}" in
  up)
    app="$(cd "${2:-$root/examples/hello}" && pwd)"
    mkdir -p "$state"
    nats_up
    nats_wait
    nimbus_up "$app"
    echo "cluster up; \`nimbus nodes --server http://127.0.0.1:8081 --token \$(cat $state/node-1/admin.token)\` lists the nodes"
    ;;
  down)
    for i in 1 2 3; do stop "$state/node-$i.pid" 40; done
    for i in 1 2 3; do stop "$state/nats-$i.pid" 10; done
    echo "cluster down (state kept in $state)"
    ;;
  *)
    echo "usage: scripts/cluster.sh up [APP_DIR] | down" >&2
    exit 2
    ;;
esac
