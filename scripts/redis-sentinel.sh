#!/usr/bin/env bash
# A throwaway Sentinel-watched Redis (a master, 1 replica, 3 sentinels) on loopback, for
# FAIRWAY_TEST_REDIS=sentinel (tests/conftest.py) and for trying fairway on Sentinel
# (docs/operations.md, "Redis Sentinel").
# usage: redis-sentinel.sh start|stop|status|url
#   env: BASE (data dir), PORTS (5 ports: master, replica, then the 3 sentinels),
#        SERVICE (the name the sentinels monitor), DOWN_AFTER_MS (down-after-milliseconds)
# Starts every redis-server itself (no systemd), data under $BASE/<port>.
# Stops ONLY the PIDs recorded in $BASE/<port>/redis.pid (after checking they are ours).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/servers.sh"
use_redis
BASE=${BASE:-${TMPDIR:-/tmp}/fairway-redis-sentinel}
PORTS=${PORTS:-"17500 17501 17502 17503 17504"}
SERVICE=${SERVICE:-fairway-suite}
DOWN_AFTER_MS=${DOWN_AFTER_MS:-1000}
read -r MASTER REPLICA SENTINELS <<<"$PORTS"
[ "$(echo "$SENTINELS" | wc -w)" -eq 3 ] || { echo "PORTS must list 5 ports (master replica s1 s2 s3): '$PORTS'" >&2; exit 2; }
# The master has ACKed its replica (until then a failover could promote a replica at offset 0).
replica_online() { "$REDIS_CLI" -p "$MASTER" info replication | grep -q '^slave0:.*state=online'; }
# A sentinel can take part in a failover only once it knows the replica (INFO every 10 s) and the
# two other sentinels (hello messages every 2 s).
sentinel_ready() {
  local state; state=$("$REDIS_CLI" -p "$1" sentinel master "$SERVICE") || return 1
  echo "$state" | grep -A1 -x 'num-slaves' | tail -1 | grep -qx 1 \
    && echo "$state" | grep -A1 -x 'num-other-sentinels' | tail -1 | grep -qx 2
}
url() { echo "redis+sentinel://$(for p in $SENTINELS; do printf '127.0.0.1:%s,' "$p"; done | sed 's/,$//')/$SERVICE/0"; }

start() {
  local t0 p; t0=$(now)
  stop >/dev/null
  for p in $PORTS; do
    mkdir -p "$BASE/$p"
    rm -f "$BASE/$p/dump.rdb" "$BASE/$p/redis.log" "$BASE/$p/sentinel.conf"  # fresh each time
  done
  start_redis "$MASTER"
  start_redis "$REPLICA" --replicaof 127.0.0.1 "$MASTER"
  for p in $SENTINELS; do
    # Sentinel rewrites its config file (replicas, peers, epochs): a fresh one every start.
    cat >"$BASE/$p/sentinel.conf" <<EOF
port $p
bind 127.0.0.1
protected-mode no
dir $BASE/$p
daemonize yes
pidfile $BASE/$p/redis.pid
logfile $BASE/$p/redis.log
sentinel monitor $SERVICE 127.0.0.1 $MASTER 2
sentinel down-after-milliseconds $SERVICE $DOWN_AFTER_MS
sentinel failover-timeout $SERVICE 5000
EOF
    "$REDIS_SERVER" "$BASE/$p/sentinel.conf" --sentinel
  done
  # shellcheck disable=SC2086
  wait_redis_up $PORTS
  wait_for 30 "replica $REPLICA online on master $MASTER" replica_online
  for p in $SENTINELS; do wait_for 40 "sentinel $p sees 1 replica and 2 other sentinels" sentinel_ready "$p"; done
  echo "redis sentinel up: master $MASTER, replica $REPLICA, sentinels $SENTINELS" \
    "($(since "$t0") s); FAIRWAY_REDIS_URL=$(url)"
}

stop() {
  # shellcheck disable=SC2086
  stop_redis $PORTS
  echo "redis sentinel stopped"
}

status() {
  local p
  for p in $MASTER $REPLICA; do
    printf '%s: ' "$p"; "$REDIS_CLI" -p "$p" info replication 2>/dev/null | grep '^role:' | tr -d '\r' || echo down
  done
  local master
  for p in $SENTINELS; do
    if master=$("$REDIS_CLI" -p "$p" sentinel get-master-addr-by-name "$SERVICE" 2>/dev/null) && [ -n "$master" ]; then
      echo "$p: sentinel, master at $(echo "$master" | paste -sd:)"
    else echo "$p: down"; fi
  done
}

verb "start|stop|status|url" "${1:-start}"
