#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine, set-up included: the system packages the tests
# drive (Redis, RabbitMQ, Chromium for the dashboard's browser test, promtool for the Prometheus
# rules, npm for the Lua formatter), Redis and RabbitMQ started when they do not answer, the venv, then lint and pytest.
# Arguments go to pytest: `bash scripts/test-all.sh -m "not chaos and not browser and not cluster"`
# (without any, the quick layer runs in two processes and the slow tests after it, one at a time);
# then the RabbitMQ tests of tests/brokers, tests/ops and tests/cli run on quorum queues, and the
# Redis half of the quick subset on a Redis Cluster.
# `FAIRWAY_TEST_REDIS=cluster bash scripts/test-all.sh -k "not rabbitmq"`: the Redis half on a cluster.
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

# FAIRWAY_TEST_REDIS=cluster runs the Redis half on a local 3 + 3 Redis Cluster (tests/conftest.py):
# start it here, on scripts/redis-cluster.sh's ports, unless FAIRWAY_TEST_REDIS_URL names one.
if [ "${FAIRWAY_TEST_REDIS:-}" = cluster ] && [ -z "${FAIRWAY_TEST_REDIS_URL:-}" ]; then
    bash scripts/redis-cluster.sh start
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# The developer venv and tox's two environments are installed side by side (mostly waiting on the
# package index: about 2 min and 85 s each when done one after the other), then lint and pytest run.
.venv/bin/pip install -q tox
.venv/bin/pip install -q -e ".[all]" &
venv_install=$!
.venv/bin/tox -e lint,py --notest --parallel all --parallel-no-spinner
wait "$venv_install"
if (($#)); then
    .venv/bin/tox -e lint,py -- "$@"
else
    # The whole suite: the quick layer in two pytest-xdist processes (5:49 -> about 3:30 on 2 cores),
    # then the slow tests one at a time (chaos, browser and cluster tests start servers of their own on
    # fixed loopback port ranges, and time their failovers).
    .venv/bin/tox -e lint
    .venv/bin/tox -e py -- -n 2 -m "not chaos and not browser and not cluster"
    .venv/bin/tox -e py --skip-pkg-install -- -m "chaos or browser or cluster"
fi

# Two more passes, each on throwaway servers of its own that are stopped by PID on the way out, and
# each in two processes like the quick layer (its tests are isolated by namespace and queue names).
quorum_node() { NODES=1 PORT=17240 BASE=/tmp/fairway-quorum-node bash scripts/rabbitmq-cluster.sh "$@"; }
trap 'quorum_node stop >/dev/null 2>&1 || true; bash scripts/redis-cluster.sh stop >/dev/null 2>&1 || true' EXIT
# The RabbitMQ tests that declare queues once more on quorum queues (FAIRWAY_RABBITMQ__QUEUE_TYPE,
# which tox passes on and the tests' Settings read): every queue fairway declares has other
# arguments there. The quick subset only (the cluster tests run quorum mode anyway), on a one-node
# RabbitMQ of its own: hundreds of quorum queues made and deleted within minutes once left the
# shared node on 5672 answering no handshake until it was restarted.
quorum_node start
FAIRWAY_RABBITMQ_URL=$(quorum_node urls) FAIRWAY_RABBITMQ__QUEUE_TYPE=quorum \
    .venv/bin/tox -e py --skip-pkg-install -- -n 2 -k rabbitmq -m "not chaos and not browser and not cluster" \
    tests/brokers tests/ops tests/cli
quorum_node stop
# The Redis half of the quick subset on a 3 + 3 Redis Cluster (docs/design.md, "Redis Cluster"):
# every test that talks to the suite's Redis. Left out: the unit tests (no server), the embedded
# Redis and the demo on it, the bench smoke runs, and the chaos tests, which run on a cluster of
# their own in the main pass (tests/chaos/test_redis_cluster.py); `FAIRWAY_TEST_REDIS=cluster
# bash scripts/test-all.sh` runs everything there, Sentinel likewise: CONTRIBUTING.md.
bash scripts/redis-cluster.sh start
FAIRWAY_TEST_REDIS=cluster .venv/bin/tox -e py --skip-pkg-install -- -n 2 -k "not rabbitmq" \
    -m "not chaos and not browser and not cluster and not sentinel" \
    tests/brokers tests/store tests/middlewares tests/ops tests/cli tests/dashboard tests/actors tests/core \
    tests/package/test_quickstart.py tests/package/test_examples.py --ignore=tests/core/test_embedded.py
