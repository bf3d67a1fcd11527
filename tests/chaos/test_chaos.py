"""Chaos: the real ``dramatiq`` command against real servers while we break things (docs/design.md).

Each test counts every job at the end (``chaos_support.RunLog``, kept in the shared Redis, which
no test here breaks). What is broken is always ours: a worker process of our own command, a
throwaway redis-server on its own port, a throwaway RabbitMQ node, a throwaway state store.
Timing is never asserted (the machine is shared); waits are generous.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Broker, Worker

from dramatiq_fairway import setup
from dramatiq_fairway.brokers import fair_redis
from dramatiq_fairway.brokers.rabbitmq import FairwayRabbitmqBroker
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.dead_letters import DeadLetterStore
from dramatiq_fairway.store.scripts import ScriptCall, run_scripts

from ..conftest import REDIS_URL, redis_for_tests
from ..support.chaos_support import (
    RunLog,
    WorkerCommand,
    chaos_env,
    declare_actors,
    delete_rabbitmq_queues,
    log_tail,
    push_raw,
    send_jobs,
    throwaway_redis,
    worker_commands,
)
from ..support.fair_support import delete_namespace, fair_broker
from ..support.helpers import dramatiq_command, wait_for
from ..support.rabbitmq_node import throwaway_rabbitmq

pytestmark = pytest.mark.chaos

THREADS = 4
# What one worker process holds unacked beyond its running jobs: Dramatiq asks its consumer for
# 2 x threads (FAIRWAY_FAIRNESS__PREFETCH, which changes that on Redis, is left unset here).
PREFETCH = 2 * THREADS


@pytest.fixture
def runs(namespace: str) -> Iterator[RunLog]:
    log = RunLog(namespace)
    yield log
    log.delete()


@pytest.fixture
def cleanup_namespace(namespace: str) -> Iterator[None]:
    """Delete the namespace's keys in the shared Redis, the broker's hash-tagged ones included."""
    yield
    client = redis_for_tests()
    delete_namespace(client, namespace)
    client.close()


def _logs(commands: list[WorkerCommand]) -> str:
    return "\n".join(f"--- {c.log_file}\n{log_tail(c.log_file)}" for c in commands)


def _wait(predicate: Callable[[], object], timeout: float, *logs: Path, runs: RunLog | None = None) -> None:
    """``wait_for`` whose failure shows the worker logs and how many runs were counted."""
    try:
        wait_for(predicate, timeout=timeout, interval=0.25)
    except AssertionError as error:
        counted = f"{runs.size()} runs counted" if runs else ""
        tails = "\n".join(f"--- {log}\n{log_tail(log)}" for log in logs)
        raise AssertionError(f"{error}; {counted}\n{tails}") from None


# (a) -------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("cleanup_namespace")
def test_sigkill_of_one_worker_process_loses_no_job(
    broker: Broker, settings: Settings, queue_name: str, runs: RunLog, short_tmp: Path
) -> None:
    jobs = range(2000)
    job, _fail = declare_actors(broker, queue_name, settings.namespace)
    send_jobs(broker, job, jobs, seconds=0.01)
    env = chaos_env(settings, queue_name)
    with worker_commands(env, short_tmp, count=2, threads=THREADS) as commands:
        victim = commands[0]
        victim_pid = victim.worker_pid()
        logs = [c.log_file for c in commands]
        _wait(lambda: runs.size() >= 300 and victim_pid in {pid for pid, _ in runs.runs()}, 120, *logs, runs=runs)
        os.kill(victim_pid, signal.SIGKILL)
        # The dramatiq master exits when one of its processes dies; a supervisor starts it again.
        wait_for(victim.exited, timeout=60)
        victim.start()
        _wait(lambda: runs.all_done(jobs), 240, *logs, victim.log_file, runs=runs)
        if isinstance(broker, FairwayRabbitmqBroker):
            # The victim's acks that went out without their decrements: healed by the live workers.
            counts = broker.tenant_counts
            assert counts is not None
            _wait(lambda: counts.snapshot(queue_name) == {}, 60, *logs, victim.log_file)
        assert not any(c.exited() for c in commands), _logs(commands)
    runs_after = runs.runs()
    counts = runs.counts()
    assert set(counts) == set(jobs)
    duplicates = {job_id for job_id, count in counts.items() if count > 1}
    # Only what the killed process held can run twice: what it had started or prefetched.
    ran_in_victim = {job_id for pid, job_id in runs_after if pid == victim_pid}
    assert duplicates <= ran_in_victim
    assert len(duplicates) <= PREFETCH + THREADS, sorted(duplicates)
    assert max(counts.values()) <= 2


# (b) -------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("cleanup_namespace")
def test_redis_sigkill_and_restart_mid_run_loses_no_job(
    namespace: str, queue_name: str, runs: RunLog, short_tmp: Path
) -> None:
    jobs = range(1000)
    with throwaway_redis(short_tmp / "redis") as server:
        settings = Settings(broker="redis", redis_url=server.url, namespace=namespace, data_dir=short_tmp)
        producer = setup(settings)
        try:
            job, _fail = declare_actors(producer, queue_name, namespace)
            send_jobs(producer, job, jobs, seconds=0.01)
        finally:
            producer.close()
        log = short_tmp / "worker.log"
        with dramatiq_command(
            "tests.support.chaos_support:worker_app",
            chaos_env(settings, queue_name),
            processes=2,
            threads=THREADS,
            log_file=log,
        ) as command:
            _wait(lambda: runs.size() >= 200, 120, log, runs=runs)
            server.kill()
            time.sleep(1.0)
            server.start()
            _wait(lambda: runs.all_done(jobs), 120, log, runs=runs)
            # Reconnected by themselves: the master exits when a worker process dies.
            assert command.poll() is None, log_tail(log)
    assert set(runs.counts()) == set(jobs)


@pytest.mark.usefixtures("cleanup_namespace")
def test_fetch_reply_lost_to_a_dropped_connection_loses_no_message(
    namespace: str, queue_name: str, runs: RunLog, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(broker="redis", namespace=namespace, data_dir=short_tmp)
    broker = fair_broker(settings)
    job, _fail = declare_actors(broker, queue_name, namespace)
    send_jobs(broker, job, range(3), seconds=0)
    lost: list[object] = []

    def reply_lost_once(client: redis.Redis, calls: list[ScriptCall], **options: Any) -> list[Any]:
        # What a Redis killed between running the script (AOF fsynced) and sending its reply does.
        replies = run_scripts(client, calls, **options)
        if calls and calls[-1].args[0] == "fetch" and replies[-1][0] and not lost:
            lost.append(replies[-1])
            raise redis.ConnectionError("Connection closed by server.")
        return replies

    monkeypatch.setattr(fair_redis, "run_scripts", reply_lost_once)
    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        wait_for(lambda: runs.all_done(range(3)), timeout=20)
    finally:
        worker.stop(timeout=10_000)
        broker.close()
    assert lost


# (c) -------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("cleanup_namespace")
def test_rabbitmq_app_restart_mid_run_loses_no_job(
    namespace: str, queue_name: str, runs: RunLog, short_tmp: Path
) -> None:
    jobs = range(1000)
    with throwaway_rabbitmq(short_tmp / "rabbit") as node:
        settings = Settings(
            broker="rabbitmq",
            rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{node.port}/%2F",
            state_url=REDIS_URL,
            namespace=namespace,
            data_dir=short_tmp,
        )
        producer = setup(settings)
        try:
            job, _fail = declare_actors(producer, queue_name, namespace)
            send_jobs(producer, job, jobs, seconds=0.01)
        finally:
            producer.close()
        log = short_tmp / "worker.log"
        with dramatiq_command(
            "tests.support.chaos_support:worker_app",
            chaos_env(settings, queue_name),
            processes=2,
            threads=THREADS,
            log_file=log,
        ) as command:
            _wait(lambda: runs.size() >= 200, 120, log, runs=runs)
            node.ctl("stop_app")
            time.sleep(1.0)
            node.ctl("start_app")
            _wait(lambda: runs.all_done(jobs), 240, log, runs=runs)
            assert command.poll() is None, log_tail(log)
    assert set(runs.counts()) == set(jobs)


# (d) -------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("cleanup_namespace")
def test_garbage_and_unknown_actor_are_dead_lettered_and_the_worker_keeps_serving(
    broker: Broker, settings: Settings, queue_name: str, runs: RunLog, short_tmp: Path
) -> None:
    job, _fail = declare_actors(broker, queue_name, settings.namespace)
    send_jobs(broker, job, range(50), seconds=0)
    garbage = b"\xff\x00 not json at all {" * 4
    push_raw(broker, settings, queue_name, garbage)
    stray: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue_name, actor_name="no_such_actor", args=(1,), kwargs={}, options={}
    )
    push_raw(broker, settings, queue_name, stray.encode())
    send_jobs(broker, job, range(50, 100), seconds=0)
    log = short_tmp / "worker.log"
    store = DeadLetterStore(settings)
    with dramatiq_command(
        "tests.support.chaos_support:worker_app", chaos_env(settings, queue_name), threads=2, log_file=log
    ) as command:
        _wait(lambda: runs.all_done(range(100)), 120, log, runs=runs)
        undecodable_id = f"undecodable-{hashlib.sha256(garbage).hexdigest()[:32]}"
        _wait(lambda: store.get(undecodable_id) and store.get(stray.message_id), 60, log)
        assert command.poll() is None, log_tail(log)
    undecodable = store.get(undecodable_id)
    unknown = store.get(stray.message_id)
    assert undecodable is not None
    assert unknown is not None
    assert undecodable.reason == "undecodable"
    assert undecodable.raw["length"] == len(garbage)
    assert unknown.reason == "unknown_actor"
    assert unknown.actor == "no_such_actor"
    assert unknown.error_type == "dramatiq.errors.ActorNotFound"
    assert "no_such_actor" in (unknown.error_message or "")


@pytest.mark.usefixtures("cleanup_namespace")
def test_ten_megabyte_message_is_dead_lettered_as_too_large(
    broker: Broker, settings: Settings, queue_name: str, runs: RunLog, short_tmp: Path
) -> None:
    job, _fail = declare_actors(broker, queue_name, settings.namespace)
    huge = job.message_with_options(args=(-1, 0.0, "x" * 10_000_000))
    send_jobs(broker, job, range(10), seconds=0)
    push_raw(broker, settings, queue_name, huge.encode())
    send_jobs(broker, job, range(10, 20), seconds=0)
    log = short_tmp / "worker.log"
    store = DeadLetterStore(settings)
    with dramatiq_command(
        "tests.support.chaos_support:worker_app", chaos_env(settings, queue_name), threads=2, log_file=log
    ) as command:
        _wait(lambda: runs.all_done(range(20)), 120, log, runs=runs)
        _wait(lambda: store.get(huge.message_id) or -1 in runs.counts(), 30, log)
        assert command.poll() is None, log_tail(log)
    record = store.get(huge.message_id)
    assert -1 not in runs.counts(), "the too-large message ran"
    assert record is not None
    assert record.reason == "too_large"
    assert len(record.model_dump_json()) < 100_000, "a too-large body must not be kept whole"


# (e) -------------------------------------------------------------------------------------------

DEGRADATION_WARNINGS = (
    "Breakers fall back to per-process state",
    "Dead-letter store unreachable",
    "State store unavailable, job status updates are dropped",
    "State store unavailable, tenant queues are served without counts",
)


@pytest.mark.usefixtures("cleanup_namespace")
def test_state_store_down_with_rabbitmq_up_degrades_and_loses_nothing(
    namespace: str, queue_name: str, runs: RunLog, short_tmp: Path
) -> None:
    jobs = range(100)
    with throwaway_redis(short_tmp / "state") as state:
        settings = Settings(broker="rabbitmq", state_url=state.url, namespace=namespace, data_dir=short_tmp)
        producer = setup(settings)
        log = short_tmp / "worker.log"
        try:
            job, fail = declare_actors(producer, queue_name, namespace)
            with dramatiq_command(
                "tests.support.chaos_support:worker_app", chaos_env(settings, queue_name), threads=2, log_file=log
            ) as command:
                state.kill()
                # Every option that needs the state store: a breaker, an idempotency key, status.
                for job_id in jobs:
                    job.send_with_options(args=(job_id,), breaker="chaos-dependency", unique_key=f"chaos-{job_id}")
                failed = [fail.send(job_id).message_id for job_id in range(5)]
                _wait(lambda: runs.all_done(jobs), 120, log, runs=runs)
                spool = DeadLetterStore(settings).spool.path
                _wait(lambda: spool.exists() and len(spool.read_text().splitlines()) == len(failed), 60, log)
                text = log.read_text(errors="replace")
                for warning in DEGRADATION_WARNINGS:
                    assert warning in text, warning

                # The store returns: the next dead letter written replays the spool first.
                state.start()
                failed.append(fail.send(99).message_id)
                store = DeadLetterStore(settings)
                _wait(lambda: all(store.get(message_id) for message_id in failed), 60, log)
                assert not store.spool.pending()
                assert {store.get(message_id).reason for message_id in failed} == {"permanent"}  # type: ignore[union-attr]
                assert command.poll() is None, log_tail(log)
        finally:
            delete_rabbitmq_queues(producer, settings, queue_name)
            producer.close()
    assert set(runs.counts()) == set(jobs)
    assert all(count == 1 for count in runs.counts().values())
