#!/usr/bin/env bash
# A throwaway 3-node RabbitMQ cluster on loopback, to try quorum mode by hand (docs/operations.md,
# "RabbitMQ cluster and quorum queues"). Run as root (or as a user who can run rabbitmq-server).
#   scripts/rabbitmq-cluster.sh start|stop|status|urls
# env: BASE (data dir, default /tmp/fairway-rabbitmq-cluster), NODES (3), PORT (first AMQP port, 17200).
# Nodes fwcN@localhost listen on 127.0.0.1:PORT+N (AMQP) and PORT+10+N (Erlang distribution), with a
# private epmd on PORT+20 and their own Erlang cookie: the node on 5672 is never involved.
# The same recipe as tests/support/rabbitmq_cluster.py, which the cluster tests use.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/servers.sh"
BASE=${BASE:-/tmp/fairway-rabbitmq-cluster}
NODES=${NODES:-3}
PORT=${PORT:-17200}
# The real scripts, not /usr/sbin/rabbitmq-*: as root that wrapper switches to the rabbitmq user,
# which resets HOME (so the cookie) and cannot write $BASE.
RMQ=/usr/lib/rabbitmq/bin

export HOME="$BASE/home" ERL_EPMD_PORT=$((PORT + 20)) ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf"
export RABBITMQ_CTL_DIST_PORT_MIN=$((PORT + 30)) RABBITMQ_CTL_DIST_PORT_MAX=$((PORT + 39))

node() { echo "fwc$1@localhost"; }
ctl() { local n=$1; shift; "$RMQ/rabbitmqctl" -n "$(node "$n")" "$@"; }

start_node() {
  local i=$1 d="$BASE/node$1"
  mkdir -p "$d/log"
  echo '[].' >"$d/enabled_plugins"
  # Our own config: the system rabbitmq.conf would bind 5672.
  printf 'listeners.tcp.local = 127.0.0.1:%s\n' $((PORT + i)) >"$d/rabbitmq.conf"
  rm -f "$d/rabbit.pid"
  RABBITMQ_NODENAME="$(node "$i")" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$((PORT + i)) \
    RABBITMQ_DIST_PORT=$((PORT + 10 + i)) RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_PID_FILE="$d/rabbit.pid" RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "$RMQ/rabbitmq-server" -detached
}

start() {
  stop >/dev/null
  rm -rf "$BASE"; mkdir -p "$HOME"; : >"$RABBITMQ_CONF_ENV_FILE"
  head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$HOME/.erlang.cookie"; chmod 400 "$HOME/.erlang.cookie"
  epmd -port "$ERL_EPMD_PORT" -address 127.0.0.1 </dev/null >"$BASE/epmd.log" 2>&1 &
  echo $! >"$BASE/epmd.pid"
  wait_for 5 "epmd on $ERL_EPMD_PORT" epmd -port "$ERL_EPMD_PORT" -names
  for i in $(seq 0 $((NODES - 1))); do start_node "$i"; done
  for i in $(seq 0 $((NODES - 1))); do
    wait_for 30 "node $i's pid file" test -s "$BASE/node$i/rabbit.pid"
    ctl "$i" wait "$BASE/node$i/rabbit.pid" --timeout 120 >/dev/null
  done
  for i in $(seq 1 $((NODES - 1))); do
    ctl "$i" stop_app >/dev/null; ctl "$i" join_cluster "$(node 0)" >/dev/null; ctl "$i" start_app >/dev/null
  done
  ctl 0 await_online_nodes "$NODES" --timeout 60 >/dev/null
  echo "$NODES-node cluster running; FAIRWAY_RABBITMQ_URL=$(urls)"
}

stop() {
  # PIDs first: a node deletes its PID file as soon as it starts shutting down; a SIGKILLed one
  # leaves a stale file, so only a PID that is still our beam (its data dir) is signalled.
  local pids=() f pid
  for f in "$BASE"/node*/rabbit.pid; do
    [ -s "$f" ] || continue; pid=$(cat "$f")
    grep -qzx "RABBITMQ_MNESIA_BASE=$(dirname "$f")/mnesia" "/proc/$pid/environ" 2>/dev/null && pids+=("$pid")
  done
  stop_pids 60 "${pids[@]}"
  if [ -s "$BASE/epmd.pid" ]; then
    pid=$(cat "$BASE/epmd.pid")
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = epmd ] && kill "$pid" 2>/dev/null || true
    rm -f "$BASE/epmd.pid"
  fi
  echo "cluster stopped"
}

status() { ctl 0 cluster_status; }
urls() {
  local i out=""
  for i in $(seq 0 $((NODES - 1))); do out="$out${out:+,}amqp://guest:guest@127.0.0.1:$((PORT + i))/%2F"; done
  echo "$out"
}

verb "start|stop|status|urls" "${1:-}"
