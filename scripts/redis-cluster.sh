#!/usr/bin/env bash
# A throwaway Redis Cluster (3 masters + 3 replicas) on loopback, for FAIRWAY_TEST_REDIS=cluster
# (tests/conftest.py) and for trying fairway on a cluster (docs/operations.md, "Redis Cluster").
# usage: redis-cluster.sh start|stop|status
#   env: BASE (data dir), PORTS (6 ports), NODE_TIMEOUT (cluster-node-timeout, ms)
# Starts every redis-server itself (no config file, no systemd), data under $BASE/<port>.
# Stops ONLY the PIDs recorded in $BASE/<port>/redis.pid (after checking they are ours).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/servers.sh"
use_redis
BASE=${BASE:-${TMPDIR:-/tmp}/fairway-redis-cluster}
PORTS=${PORTS:-"17300 17301 17302 17303 17304 17305"}
NODE_TIMEOUT=${NODE_TIMEOUT:-2000}
node_ok()      { "$REDIS_CLI" -p "$1" cluster info | grep -q '^cluster_state:ok'; }
replica_ok() {  # master: its replica is state=online (has ACKed); replica: link is up
  local info; info=$("$REDIS_CLI" -p "$1" info replication)
  if echo "$info" | grep -q '^role:master'; then echo "$info" | grep -q '^slave0:.*state=online'
  else echo "$info" | grep -q '^master_link_status:up'; fi
}

start() {
  local t0 p hosts=""; t0=$(now)
  stop >/dev/null
  for p in $PORTS; do
    mkdir -p "$BASE/$p"
    rm -f "$BASE/$p/nodes.conf" "$BASE/$p/dump.rdb" "$BASE/$p/redis.log"  # fresh cluster each time
    start_redis "$p" --cluster-enabled yes --cluster-config-file "$BASE/$p/nodes.conf" \
      --cluster-node-timeout "$NODE_TIMEOUT"
    hosts="$hosts 127.0.0.1:$p"
  done
  # shellcheck disable=SC2086
  wait_redis_up $PORTS
  # shellcheck disable=SC2086
  "$REDIS_CLI" --cluster create $hosts --cluster-replicas 1 --cluster-yes >"$BASE/create.log" 2>&1 \
    || { cat "$BASE/create.log" >&2; return 1; }
  for p in $PORTS; do wait_for 20 "cluster_state:ok on $p" node_ok "$p"; done
  # Without this wait, writes made in the first ~1 s can be lost on failover: until the replica
  # has ACKed after its initial sync the master only buffers them (replica promoted at offset 0).
  for p in $PORTS; do wait_for 20 "replication online on $p" replica_ok "$p"; done
  echo "redis cluster up on: $PORTS  ($(since "$t0") s)"
}

stop() {
  # shellcheck disable=SC2086
  stop_redis $PORTS
  echo "redis cluster stopped"
}

status() {
  for p in $PORTS; do
    printf '%s: ' "$p"; "$REDIS_CLI" -p "$p" cluster info 2>/dev/null | grep cluster_state || echo down
  done
}

verb "start|stop|status" "${1:-start}"
