"""Redis Cluster faults: a throwaway cluster of 3 masters + 3 replicas (tests/support/redis_cluster.py)
loses a master mid-drain, or a worker process, and the same clients carry on without a restart.

Job runs are counted in the shared Redis (``chaos_support.RunLog``), which no test here breaks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq import Actor, Worker

from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.ops.diagnostics import check
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import Settings

from ..support.chaos_support import RunLog, chaos_env, declare_actors, log_tail, send_jobs, worker_commands
from ..support.fair_support import fair_broker
from ..support.helpers import settings_env, wait_for
from ..support.lost_replies import JOBS, drain, reply_lost_once
from ..support.redis_cluster import RedisClusterNodes, redis_cluster

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]

QUEUES = 3
STREAMED_PER_QUEUE = 100
THREADS = 4
# Per queue: one tenant floods it (HIGH and NORMAL), two small tenants send after it.
BIG_HIGH, BIG_NORMAL, SMALL = 100, 800, 50


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    with redis_cluster(Path(tmp_path_factory.mktemp("rc", numbered=True))) as nodes:
        yield nodes


@pytest.fixture
def runs(namespace: str) -> Iterator[RunLog]:
    log = RunLog(namespace)
    yield log
    log.delete()


def _settings(cluster: RedisClusterNodes, namespace: str, data_dir: Path, wait_replicas: int = 1) -> Settings:
    return Settings(
        broker="redis", redis_url=cluster.url, namespace=namespace, data_dir=data_dir, redis_wait_replicas=wait_replicas
    )


def test_check_reports_the_cluster(cluster: RedisClusterNodes, namespace: str, short_tmp: Path) -> None:
    def shapes() -> set[tuple[str | None, int | None, int | None, int | None]]:
        report = check(_settings(cluster, namespace, short_tmp))
        assert report.ok, report.failure()
        return {(s.mode, s.masters, s.replicas, s.slots_covered) for s in (report.broker, report.state_store)}

    # A node that joined a moment ago may not know every other node's role yet: the gossip settles.
    wait_for(lambda: shapes() == {("cluster", 3, 3, 16384)}, timeout=20, interval=0.5)


def test_migrate_refuses_a_cluster_in_one_line(cluster: RedisClusterNodes, namespace: str, short_tmp: Path) -> None:
    env = {**os.environ, **settings_env(_settings(cluster, namespace, short_tmp))}
    result = subprocess.run(
        [sys.executable, "-m", "dramatiq_fairway.cli", "migrate", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert "needs one Redis server" in line


def _queue_actor(broker: FairRedisBroker, queue_name: str, index: int, runs: RunLog) -> Actor[..., None]:
    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name=f"cluster_job_{index}", max_retries=3)
    def cluster_job(job_id: int) -> None:
        runs.record(job_id)

    return cluster_job


def _one_queue_per_master(cluster: RedisClusterNodes, broker: FairRedisBroker, namespace: str) -> list[str]:
    """QUEUES queue names whose slots are on different masters (names hash anywhere: pick them)."""
    by_master: dict[int, str] = {}
    for n in range(200):
        name = f"cq{n}_{namespace[-6:]}"
        by_master.setdefault(cluster.master_of(broker._queue_prefix(name)), name)
        if len(by_master) == QUEUES:
            return list(by_master.values())
    raise AssertionError(f"no {QUEUES} queue names on {QUEUES} masters")


def _jobs(index: int) -> list[tuple[int, str, Priority]]:
    """(job id, tenant, level) of queue ``index``'s upfront jobs, in the order they are sent."""
    base = index * 10_000
    jobs = [(base + n, "big", Priority.HIGH) for n in range(BIG_HIGH)]
    jobs += [(base + BIG_HIGH + n, "big", Priority.NORMAL) for n in range(BIG_NORMAL)]
    small = base + BIG_HIGH + BIG_NORMAL
    jobs += [(small + n, "small-a", Priority.NORMAL) for n in range(SMALL)]
    jobs += [(small + SMALL + n, "small-b", Priority.NORMAL) for n in range(SMALL)]
    return jobs


def test_master_sigkilled_mid_drain_loses_no_job_and_stays_fair_on_the_other_slots(
    cluster: RedisClusterNodes, namespace: str, short_tmp: Path, runs: RunLog, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(cluster, namespace, short_tmp, wait_replicas=1)
    broker = fair_broker(settings)
    queues = _one_queue_per_master(cluster, broker, namespace)
    # The victim is the master of the first queue's slot; queues of the others must keep their order.
    victim = cluster.master_of(broker._queue_prefix(queues[0]))
    surviving = [q for q in queues if cluster.master_of(broker._queue_prefix(q)) != victim]
    actors = [_queue_actor(broker, queue, index, runs) for index, queue in enumerate(queues)]
    upfront: dict[str, list[tuple[int, str, Priority]]] = {}
    for index, (queue, actor) in enumerate(zip(queues, actors, strict=True)):
        upfront[queue] = _jobs(index)
        messages = [
            actor.message_with_options(args=(job_id,), tenant=tenant, priority_level=level.name)
            for job_id, tenant, level in upfront[queue]
        ]
        broker.enqueue_many(messages)
    sent: list[int] = []
    failed_sends: list[str] = []
    failover_done = threading.Event()
    sent_after_failover: list[int] = []

    def produce() -> None:
        # One send at a time through the failover, on the same broker: the producer never restarts.
        for n in range(STREAMED_PER_QUEUE):
            for index, actor in enumerate(actors):
                job_id = index * 10_000 + 5_000 + n
                try:
                    actor.send_with_options(args=(job_id,), tenant="late")
                except redis.RedisError as error:
                    failed_sends.append(f"{job_id}: {error}")
                    continue
                (sent_after_failover if failover_done.is_set() else sent).append(job_id)
            time.sleep(0.02)

    worker = Worker(broker, worker_threads=THREADS, worker_timeout=50)
    worker.start()
    producer = threading.Thread(target=produce, name="cluster-producer")
    producer.start()
    replica = cluster.replica_of(victim)
    try:
        wait_for(lambda: runs.size() >= 600, timeout=180, interval=0.05)
        killed_at = time.monotonic()
        cluster.kill(victim)
        cluster.wait_for_takeover(replica)
        takeover_s = time.monotonic() - killed_at
        failover_done.set()
        # An operator brings the lost node back: it rejoins as the new master's replica, so WAIT
        # is answered again (with no replica, every write there would wait WAIT's timeout).
        cluster.start_node(victim)
        cluster.wait_ready()
        producer.join(timeout=300)
        assert not producer.is_alive()
        expected = (
            {job_id for jobs in upfront.values() for job_id, _t, _l in jobs} | set(sent) | set(sent_after_failover)
        )
        wait_for(lambda: expected <= set(runs.counts()), timeout=300, interval=0.25)
        # The workers never stopped: every worker thread and consumer is still there.
        assert all(thread.is_alive() for thread in worker.workers)
        assert all(thread.is_alive() for thread in worker.consumers.values())
    finally:
        worker.stop(timeout=10_000)
        broker.close()
    counts = runs.counts()
    order = [job for _pid, job in runs.runs()]
    with capsys.disabled():
        print(
            f"\ncluster failover (WAIT_REPLICAS=1): {len(expected)} jobs sent, "
            f"{len(expected - set(counts))} lost, {sum(counts.values()) - len(counts)} extra runs, "
            f"takeover {takeover_s:.1f} s, {len(sent_after_failover)} sent after it, "
            f"{len(failed_sends)} sends failed, {len(surviving)} of {QUEUES} queues on surviving masters"
        )
    assert not failed_sends, failed_sends[:5]
    assert sent_after_failover, "the producer finished before the failover: nothing shows it continued"
    assert surviving, "every queue hashed to the killed master: nothing to check fairness on"
    for queue in surviving:
        small, high = _assert_fair(order, upfront[queue])
        with capsys.disabled():
            print(f"  {queue}: last small-tenant job at {small:.0%}, last HIGH job at {high:.0%} of its order")


def _assert_fair(order: list[int], jobs: list[tuple[int, str, Priority]]) -> tuple[float, float]:
    """The fairness rule on one queue's upfront jobs, in the order they first finished: HIGH ahead
    of NORMAL (3 picks of 4 while both wait), and the small tenants, sent after the flood, served
    by round robin among the NORMAL picks instead of after it (FIFO would put them last). Returns
    where the last small-tenant job and the last HIGH job came, as fractions of the order."""
    tenant_of = {job_id: (tenant, level) for job_id, tenant, level in jobs}
    first: list[int] = []
    for job in order:
        if job in tenant_of and job not in first:
            first.append(job)
    position = {job: rank / len(first) for rank, job in enumerate(first)}
    small = [position[j] for j, (tenant, _l) in tenant_of.items() if tenant.startswith("small")]
    high = [position[j] for j, (_t, level) in tenant_of.items() if level is Priority.HIGH]
    # Round robin: the 100 small jobs are done after ~150 NORMAL picks plus the HIGH ones, ~25 %.
    assert max(small) <= 0.4, f"a small tenant's job ran at {max(small):.0%} of the queue's order"
    assert max(high) <= 0.3, f"a HIGH job ran at {max(high):.0%} of the queue's order"
    return max(small), max(high)


def test_sigkilled_worker_has_its_messages_redelivered_within_10_s(  # noqa: PLR0917 (fixtures)
    cluster: RedisClusterNodes,
    namespace: str,
    queue_name: str,
    short_tmp: Path,
    runs: RunLog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = _settings(cluster, namespace, short_tmp, wait_replicas=0)
    broker = fair_broker(settings)
    job, _fail = declare_actors(broker, queue_name, namespace)
    jobs = range(200)
    send_jobs(broker, job, jobs, seconds=0.05)
    env = chaos_env(settings, queue_name)
    with worker_commands(env, short_tmp, count=2, threads=THREADS) as commands:
        victim_pid = commands[0].worker_pid()
        commands[1].worker_pid()
        wait_for(lambda: len(_workers(broker)) == 2, timeout=60)
        wait_for(lambda: victim_pid in {pid for pid, _ in runs.runs()}, timeout=120, interval=0.05)
        before = _workers(broker)
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # The live worker finds the dead one (stale heartbeat, no connection) and requeues what it
        # held, started or prefetched: within 10 s, as on one Redis.
        try:
            wait_for(lambda: len(_workers(broker) & before) == 1, timeout=10, interval=0.1)
        except AssertionError:
            raise AssertionError(f"not redelivered within 10 s\n{log_tail(commands[1].log_file)}") from None
        redelivered_s = time.monotonic() - killed_at
        wait_for(lambda: runs.all_done(jobs), timeout=120, interval=0.25)
        assert not commands[1].exited(), log_tail(commands[1].log_file)
    broker.close()
    with capsys.disabled():
        print(f"\nworker SIGKILLed on a cluster: its messages requeued after {redelivered_s:.1f} s")


def _workers(broker: FairRedisBroker) -> set[bytes]:
    """Broker ids with a heartbeat: the worker processes consuming, until one is found dead."""
    return set(broker.client.zrange(broker._workers_key("heartbeats"), 0, -1))


def test_a_fetch_whose_reply_is_lost_on_a_cluster_loses_no_message(
    cluster: RedisClusterNodes, namespace: str, short_tmp: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py's cluster pipeline sends a pipeline again after a lost connection, which would hide
    # a fetch that ran: a cluster's fetch goes on the node's own connection, once, as on one server
    # (tests/brokers/test_lost_replies.py), without WAIT as with it.
    lost: list[object] = []
    settings = _settings(cluster, namespace, short_tmp, wait_replicas=0)
    ran = drain(settings, queue_name, monkeypatch, reply_lost_once(lost))
    assert lost
    assert sorted(set(ran)) == list(range(JOBS))
