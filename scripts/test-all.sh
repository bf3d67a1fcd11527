#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine, set-up included: the system packages the tests
# drive (Redis, RabbitMQ, Chromium for the dashboard's browser test, promtool for the Prometheus
# rules, npm for the Lua formatter), Redis and RabbitMQ started when they do not answer, the venv, then lint and pytest.
# Arguments go to pytest: `bash scripts/test-all.sh -m "not chaos and not browser and not cluster"`;
# a second pass runs the RabbitMQ tests of tests/brokers, tests/ops and tests/cli on quorum queues.
# Nothing is ever skipped for a missing tool: it is installed here, or the run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "scripts/test-all.sh: installing or starting '$1' needs root or sudo" >&2
        exit 1
    fi
}

packages=()
command -v redis-server >/dev/null || packages+=(redis-server)
command -v rabbitmq-server >/dev/null || packages+=(rabbitmq-server)
command -v chromium >/dev/null || packages+=(chromium)
command -v promtool >/dev/null || packages+=(prometheus)
# `tox -e lint` checks the Lua formatting with StyLua's npm build (tools/stylua.cjs).
command -v npm >/dev/null || packages+=(npm)
python3 -c "import ensurepip" 2>/dev/null || packages+=(python3-venv)
if ((${#packages[@]})); then
    echo "installing ${packages[*]}"
    as_root apt-get update -qq
    # The Debian packages start their services; the checks below start them where they do not.
    as_root apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
rabbitmq_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! redis_up; then
    echo "starting Redis on 127.0.0.1:6379 (nothing on disk)"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi
if ! rabbitmq_up; then
    echo "starting RabbitMQ on 127.0.0.1:5672"
    as_root rabbitmq-server -detached
fi
for _ in $(seq 1 120); do
    redis_up && rabbitmq_up && break
    sleep 1
done
redis_up || { echo "scripts/test-all.sh: Redis does not answer on 127.0.0.1:6379" >&2; exit 1; }
rabbitmq_up || { echo "scripts/test-all.sh: RabbitMQ does not answer on 127.0.0.1:5672" >&2; exit 1; }
as_root rabbitmqctl await_startup >/dev/null 2>&1 || true

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[all]"
.venv/bin/tox -e lint,py -- "$@"
# The RabbitMQ tests that declare queues once more on quorum queues (FAIRWAY_RABBITMQ__QUEUE_TYPE,
# which tox passes on and the tests' Settings read): every queue fairway declares has other
# arguments there. The quick subset only (about 2.5 min; the cluster tests run quorum mode anyway).
FAIRWAY_RABBITMQ__QUEUE_TYPE=quorum exec .venv/bin/tox -e py -- -k rabbitmq \
    -m "not chaos and not browser and not cluster" tests/brokers tests/ops tests/cli
