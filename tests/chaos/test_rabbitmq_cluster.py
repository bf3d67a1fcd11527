"""A throwaway 3-node RabbitMQ cluster in quorum mode (docs/operations.md).

Fairness: behind one tenant's flood, small tenants' jobs run within the first 20 % of the
processing order, as on the shared node (tests/support/tenant_flood.py).

Chaos: one node is SIGKILLed while a producer sends and two worker processes drain; nothing a
send returned for is lost. Publishers and workers get every node's URL (``FAIRWAY_RABBITMQ_URL``, comma-separated) and
connect to the first that answers, so the node killed is the first one: the one every client and
every queue's leader is on. Duplicates (at least once: a job run whose ack died with the node runs
again) are counted and printed, not asserted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from dramatiq import Worker

from dramatiq_fairway import setup
from dramatiq_fairway.brokers.rabbitmq import FairwayRabbitmqBroker
from dramatiq_fairway.settings import RabbitmqSettings, Settings

from ..conftest import REDIS_URL, _delete_queues
from ..support.chaos_support import WORKER_APP, RunLog, chaos_env, declare_actors, log_tail
from ..support.helpers import dramatiq_command, wait_for
from ..support.rabbitmq_cluster import RabbitmqCluster, rabbitmq_cluster
from ..support.tenant_flood import assert_small_tenants_ran_first, flood_then_small_tenants, ordered_tenant_job

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]

JOBS = range(2000)
THREADS = 4
# Between two sends: spreads the 2,000 sends over the drain, so the kill lands mid-send.
SEND_PAUSE = 0.002
FLOOD = 2000


@pytest.fixture(scope="session")
def cluster() -> Iterator[RabbitmqCluster]:
    with rabbitmq_cluster() as running:
        yield running


@pytest.fixture
def runs(namespace: str, state_client: redis.Redis) -> Iterator[RunLog]:
    log = RunLog(namespace)
    yield log
    log.delete()


@pytest.fixture
def quorum_settings(cluster: RabbitmqCluster, namespace: str, short_tmp: Path, state_client: redis.Redis) -> Settings:
    """Every node's URL, quorum queues; the state store's keys of the namespace are deleted after."""
    return Settings(
        broker="rabbitmq",
        rabbitmq_url=cluster.urls,
        state_url=REDIS_URL,
        namespace=namespace,
        data_dir=short_tmp,
        rabbitmq=RabbitmqSettings(queue_type="quorum"),
    )


@pytest.mark.parametrize("small_tenants", [3, 30])
def test_small_tenants_run_within_the_first_fifth_behind_a_flood_on_quorum_queues(
    quorum_settings: Settings, queue_name: str, small_tenants: int
) -> None:
    settings = quorum_settings
    broker = setup(settings)
    assert isinstance(broker, FairwayRabbitmqBroker)
    job, order = ordered_tenant_job(broker, queue_name)
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    try:
        small = flood_then_small_tenants(job, flood=FLOOD, small_tenants=small_tenants)
        # One thread: the order jobs start in is the order they were handed out (FIFO is checked exactly).
        worker.start()
        assert_small_tenants_ran_first(order, small, flood=FLOOD, label="3-node cluster, quorum queues")
    finally:
        worker.stop(timeout=10_000)
        _delete_queues(broker, settings)
        broker.close()


def test_sigkill_of_a_node_mid_drain_loses_no_job(
    cluster: RabbitmqCluster, quorum_settings: Settings, queue_name: str, runs: RunLog, short_tmp: Path
) -> None:
    settings = quorum_settings
    producer = setup(settings)
    job, _fail = declare_actors(producer, queue_name, settings.namespace)
    producer.declare_queue(queue_name, ensure=True)
    sent: list[int] = []
    failed: list[tuple[int, str]] = []

    def send_all() -> None:
        for job_id in JOBS:
            try:
                job.send(job_id, 0.0)
            except Exception as error:  # every failed send is reported by the test
                failed.append((job_id, repr(error)))
            else:
                sent.append(job_id)
            time.sleep(SEND_PAUSE)

    victim = cluster.nodes[0]
    log = short_tmp / "worker.log"
    sender = threading.Thread(target=send_all, daemon=True)
    try:
        with dramatiq_command(
            WORKER_APP, chaos_env(settings, queue_name), processes=2, threads=THREADS, log_file=log
        ) as command:
            sender.start()
            wait_for(lambda: len(sent) >= 600 and runs.size() >= 300, timeout=180)
            cluster.kill(victim)
            sent_at_kill, ran_at_kill = len(sent), runs.size()
            sender.join(timeout=600)
            assert not sender.is_alive()
            done = set(sent)
            _wait(lambda: runs.size() >= len(done) and done <= set(runs.counts()), 300, log)
            assert command.poll() is None, log_tail(log)
    finally:
        producer.close()
        # The session's cluster is whole again for the next test.
        if victim.pid() is None:
            cluster.start(victim)
    # Dramatiq's worker logs this when a consumer lost its connection and starts it again.
    reconnects = log.read_text(errors="replace").count("Restarting consumer")
    counts = runs.counts()
    lost = sorted(set(sent) - set(counts))
    duplicates = {job_id: count for job_id, count in counts.items() if count > 1}
    print(
        f"\ncluster chaos: node {victim.name} SIGKILLed after {sent_at_kill} sends and {ran_at_kill} runs; "
        f"{len(sent)} sends returned, {len(failed)} raised, {sum(counts.values())} runs, "
        f"{len(duplicates)} jobs ran more than once ({sum(duplicates.values()) - len(duplicates)} extra runs), "
        f"{reconnects} consumer reconnections"
    )
    assert sent_at_kill < len(JOBS), "the kill did not land mid-send"
    assert reconnects >= 1, "no worker was connected to the node killed"
    assert failed == []
    assert lost == []


def _wait(predicate: Callable[[], object], timeout: float, log: Path) -> None:
    try:
        wait_for(predicate, timeout=timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- worker log ---\n{log_tail(log)}") from None
