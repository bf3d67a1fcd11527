"""The two-broker harness: every broker test runs on real Redis and on real RabbitMQ.

Isolation: each test gets its own fairway namespace and queue names, and everything it created
is deleted afterwards. A server that is down makes the tests that need it fail, never skip.
``Settings`` reads ``FAIRWAY_*`` too, so ``FAIRWAY_RABBITMQ__QUEUE_TYPE=quorum`` in the environment
runs the RabbitMQ half of the suite on quorum queues (docs/operations.md).

``FAIRWAY_TEST_REDIS=cluster`` runs the Redis half on a Redis Cluster: the one
``scripts/redis-cluster.sh start`` makes, or the one ``FAIRWAY_TEST_REDIS_URL`` names.
``FAIRWAY_TEST_REDIS=sentinel`` runs it on a Sentinel-watched master: the one
``scripts/redis-sentinel.sh start`` makes, or the ``redis+sentinel://`` URL ``FAIRWAY_TEST_REDIS_URL``
names. Either way the tests that need one plain server (stock Dramatiq, ``migrate``, counting one
server's round trips) use ``SINGLE_REDIS_URL``. On every Redis, each script call is checked to
touch one hash slot (``support/one_slot.py``), so a call a cluster would refuse fails on one server too.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import dramatiq
import pika
import pytest
import redis
from dramatiq import Broker, Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from redis.cluster import RedisCluster

from dramatiq_fairway import setup
from dramatiq_fairway.brokers.rabbitmq import FairwayRabbitmqBroker
from dramatiq_fairway.connections import rabbitmq_parameters, redis_client
from dramatiq_fairway.redis_urls import parse_redis_url
from dramatiq_fairway.settings import Settings, TlsSettings, mask_url
from dramatiq_fairway.store import delete_namespace

from .support.one_slot import one_slot_per_script_call

# Which Redis the Redis half runs on: "single" (the shared server), "cluster" or "sentinel".
REDIS_MODE = os.environ.get("FAIRWAY_TEST_REDIS", "single")
ON_CLUSTER = REDIS_MODE == "cluster"
# The shared one-server Redis, for the few tests that need one plain server.
SINGLE_REDIS_URL = "redis://127.0.0.1:6379/0"
# The servers the scripts start on their default ports.
DEFAULT_URLS = {
    "single": SINGLE_REDIS_URL,
    "cluster": "redis+cluster://127.0.0.1:17300,127.0.0.1:17301,127.0.0.1:17302",  # scripts/redis-cluster.sh
    # scripts/redis-sentinel.sh
    "sentinel": "redis+sentinel://127.0.0.1:17502,127.0.0.1:17503,127.0.0.1:17504/fairway-suite/0",
}
REDIS_URL = (
    os.environ.get("FAIRWAY_TEST_REDIS_URL", DEFAULT_URLS.get(REDIS_MODE, SINGLE_REDIS_URL))
    if REDIS_MODE != "single"
    else SINGLE_REDIS_URL
)
if REDIS_MODE != "single" and "PYTEST_CURRENT_TEST" not in os.environ:
    # Settings() made by a test (or a dramatiq process it starts) reads the broker's URL from here.
    # Only in pytest's own process (it imports this before any test runs): a worker process a test
    # starts imports this too (tests/support modules read REDIS_URL), and must keep the
    # FAIRWAY_REDIS_URL the test gave it (a throwaway Redis, say).
    os.environ["FAIRWAY_REDIS_URL"] = REDIS_URL
BROKER_KINDS = ["redis", "rabbitmq"]

# Importing dramatiq_fairway.actors binds its actors to the global broker, set up from FAIRWAY_*
# when there is none. In tests that broker is a StubBroker: collecting the actor tests must not
# start the embedded Redis in the user's data dir. Tests that need a real broker make their own.
dramatiq.set_broker(StubBroker())


def pytest_configure() -> None:
    """Refuse a FAIRWAY_TEST_REDIS we do not know, or a FAIRWAY_TEST_REDIS_URL of another mode."""
    if REDIS_MODE not in DEFAULT_URLS:
        raise pytest.UsageError(f"FAIRWAY_TEST_REDIS: {REDIS_MODE!r} is not one of {', '.join(DEFAULT_URLS)}")
    if parse_redis_url(REDIS_URL).mode != REDIS_MODE:
        raise pytest.UsageError(
            f"FAIRWAY_TEST_REDIS_URL: {mask_url(REDIS_URL)!r} is not a {REDIS_MODE} URL (as FAIRWAY_TEST_REDIS says)"
        )


def pytest_report_header() -> list[str]:
    """Which Redis and which RabbitMQ queue type the suite runs on, so a log says which mode passed."""
    queue_type = os.environ.get("FAIRWAY_RABBITMQ__QUEUE_TYPE", "classic")
    return [
        f"fairway: Redis {REDIS_MODE} {mask_url(REDIS_URL)} (FAIRWAY_TEST_REDIS)",
        f"fairway: RabbitMQ queue type {queue_type} (FAIRWAY_RABBITMQ__QUEUE_TYPE)",
    ]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI a skipped test is a failed one: a missing tool is installed by scripts/test-all.sh or the run fails."""
    report = yield
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI ({call.excinfo.value if call.excinfo else 'no reason'}); CI runs every test"
    return report


def redis_for_tests() -> redis.Redis:
    """A client of the Redis the suite runs on (one server, the cluster, or the current master of
    the Sentinel service of FAIRWAY_TEST_REDIS), made by the product's own factory."""
    return redis_client(REDIS_URL, TlsSettings())


def disconnect(client: redis.Redis) -> None:
    """Close every connection of ``client`` (one server's pool, or each node's of a cluster)."""
    if isinstance(client, RedisCluster):
        client.disconnect_connection_pools()
    else:
        client.connection_pool.disconnect()


@pytest.fixture(autouse=True)
def one_slot_per_call(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse, and fail the test on, any script call whose keys are in several hash slots."""
    with one_slot_per_script_call(monkeypatch) as refused:
        yield
    assert not refused, "script calls across hash slots (a cluster refuses them):\n" + "\n".join(refused)


@pytest.fixture
def namespace() -> str:
    return f"fwtest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def queue_name() -> str:
    return f"q_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary dir with a short path (unix sockets must fit in 100 characters)."""
    with tempfile.TemporaryDirectory(prefix="fw-") as path:
        yield Path(path)


@pytest.fixture
def state_client(namespace: str) -> Iterator[redis.Redis]:
    """The shared Redis as the state store; every key of the test's namespace (queues too) is deleted after."""
    client = redis_for_tests()
    client.ping()
    yield client
    delete_namespace(client, namespace)
    client.close()


@pytest.fixture(params=BROKER_KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(broker_kind: str, namespace: str, short_tmp: Path, state_client: redis.Redis) -> Settings:
    return Settings(
        broker=broker_kind,  # type: ignore[arg-type]
        namespace=namespace,
        redis_url=REDIS_URL,
        state_url=REDIS_URL,
        data_dir=short_tmp,
    )


@pytest.fixture
def broker(settings: Settings) -> Iterator[Broker]:
    """``setup(settings)`` on the real server; the test's queues are deleted afterwards."""
    broker = setup(settings)
    _check_reachable(broker, settings)
    yield broker
    _delete_queues(broker, settings)
    broker.close()


@pytest.fixture
def start_worker(broker: Broker) -> Iterator[Callable[..., Worker]]:
    """Start an in-process Worker once the test declared its actors; stopped after the test."""
    workers: list[Worker] = []

    def start(threads: int = 2) -> Worker:
        worker = Worker(broker, worker_threads=threads, worker_timeout=50)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=10_000)


def _check_reachable(broker: Broker, settings: Settings) -> None:
    if isinstance(broker, RabbitmqBroker):
        pika.BlockingConnection(rabbitmq_parameters(settings)).close()
    else:
        broker.client.ping()


def _delete_queues(broker: Broker, settings: Settings) -> None:
    broker.flush_all()
    if isinstance(broker, RabbitmqBroker):
        connection = pika.BlockingConnection(rabbitmq_parameters(settings))
        channel = connection.channel()
        for queue in broker.get_declared_queues():
            levels = broker.level_queues(queue) if isinstance(broker, FairwayRabbitmqBroker) else []
            for name in (queue, dramatiq.common.dq_name(queue), dramatiq.common.xq_name(queue), *levels):
                channel.queue_delete(name)
        if isinstance(broker, FairwayRabbitmqBroker):
            for name in list(broker.tenant_routes.declared):  # the tenant queues the test's sends made
                channel.queue_delete(name)
        connection.close()
