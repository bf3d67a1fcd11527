"""Job status on real brokers: every state, progress, cancel (queued and running), unique_key
(also across two `dramatiq` processes), soft time limits, TTLs and track_status=False."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq import Broker, Message, Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import TimeLimit

from dramatiq_fairway.cli import jobs as jobs_cli
from dramatiq_fairway.cli.output import CommandError
from dramatiq_fairway.errors import PermanentError, SoftTimeLimitExceeded, TransientError
from dramatiq_fairway.middlewares.dead_letters import DeadLetters
from dramatiq_fairway.middlewares.status import JobStatus, UniqueKeyUnavailable, progress
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store import status_writer
from dramatiq_fairway.store.dead_letters import DeadLetterStore
from dramatiq_fairway.store.scripts import ScriptCall
from dramatiq_fairway.store.status import JobRecord, JobState, JobStatusStore
from dramatiq_fairway.store.status_writer import StatusWriter

from ..support.chaos_support import push_raw
from ..support.helpers import dramatiq_command, free_port, info_lines, loud_lines, settings_env, wait_for

S = JobState


@pytest.fixture
def store(settings: Settings, state_client: redis.Redis) -> JobStatusStore:
    return JobStatusStore.from_settings(settings, client=state_client)


def states(store: JobStatusStore, message_id: str) -> list[JobState]:
    record = store.get(message_id)
    return [change.state for change in record.history] if record else []


def final(store: JobStatusStore, message_id: str, state: JobState) -> JobRecord:
    return wait_for(lambda: (r := store.get(message_id)) is not None and r.state is state and r, timeout=20)


def test_a_flush_writes_each_job_with_one_script_call_in_one_pipeline(
    store: JobStatusStore, state_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[list[ScriptCall]] = []
    run_scripts = status_writer.run_scripts
    flushing_thread = threading.get_ident()

    def recording(client: redis.Redis, calls: list[ScriptCall]) -> list[object]:
        # Only this test's flush: a writer thread of an earlier test may still be writing.
        if threading.get_ident() == flushing_thread:
            sent.append(calls)
        return run_scripts(client, calls)

    monkeypatch.setattr(status_writer, "run_scripts", recording)
    writer = StatusWriter(store, interval=3600)  # flushed by the test only
    jobs = [f"flush-{n}-{time.monotonic_ns()}" for n in range(250)]
    enqueued_ms = int(time.time() * 1000) - 5_000
    for job in jobs:
        writer.transition(job, S.STARTED, "work", "q", enqueued_ms=enqueued_ms)
    writer.progress(jobs[0], 50, "half way")
    for job in jobs[:-1]:
        writer.transition(job, S.SUCCESS, "work", "q", enqueued_ms=enqueued_ms)
    writer.transition(jobs[-1], S.REJECTED, "work", "q", mode="reject")
    writer.flush()

    # One pipeline: one call per job, its STARTED and outcome merged (a call touches one hash slot,
    # and job keys hash anywhere), then the progress and the reject, in the order they were made.
    assert len(sent) == 1
    *moves, progress, reject = sent[0]
    assert [call.keys for call in moves] == [[store.job_key(job)] for job in jobs]
    assert (progress.keys, reject.keys) == ([store.job_key(jobs[0])], [store.job_key(jobs[-1])])
    for job in jobs[:-1]:
        assert states(store, job) == [S.PENDING, S.STARTED, S.SUCCESS]
    assert states(store, jobs[-1]) == [S.PENDING, S.STARTED]  # reject leaves a started job alone
    record = store.get(jobs[0])
    assert record is not None
    assert record.progress == 50
    assert record.history[0].at == dt.datetime.fromtimestamp(enqueued_ms / 1000, dt.UTC)
    assert state_client.ttl(store.job_key(jobs[1])) <= store.ttl


def test_success_walk_keeps_one_hour(
    broker: Broker,
    queue_name: str,
    store: JobStatusStore,
    state_client: redis.Redis,
    start_worker: Callable[..., Worker],
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def ok() -> None:
        pass

    message = ok.send()
    assert states(store, message.message_id) == [S.PENDING]
    start_worker()
    record = final(store, message.message_id, S.SUCCESS)
    assert [c.state for c in record.history] == [S.PENDING, S.STARTED, S.SUCCESS]
    assert record.history[0].at <= record.history[1].at <= record.history[2].at
    assert record.as_json()["history"][2]["at"].endswith("Z")
    assert 3500 < state_client.ttl(store.job_key(message.message_id)) <= 3600


def test_retry_then_dead_letter_keeps_seven_days(
    broker: Broker,
    queue_name: str,
    store: JobStatusStore,
    state_client: redis.Redis,
    start_worker: Callable[..., Worker],
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=1, min_backoff=10, max_backoff=20)
    def flaky() -> None:
        raise TransientError("down")

    message = flaky.send()
    start_worker()
    record = final(store, message.message_id, S.DEAD_LETTER)
    assert [c.state for c in record.history] == [S.PENDING, S.STARTED, S.RETRY, S.STARTED, S.DEAD_LETTER]
    assert state_client.ttl(store.job_key(message.message_id)) > 600_000


def test_failure_without_dead_letter_store(
    broker: Broker, queue_name: str, store: JobStatusStore, start_worker: Callable[..., Worker]
) -> None:
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, DeadLetters)]

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def broken() -> None:
        raise PermanentError("no")

    message = broken.send()
    start_worker()
    assert [c.state for c in final(store, message.message_id, S.FAILURE).history] == [S.PENDING, S.STARTED, S.FAILURE]


def test_unknown_actor_is_rejected(
    broker: Broker, queue_name: str, store: JobStatusStore, start_worker: Callable[..., Worker]
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def known() -> None:
        pass

    message = broker.enqueue(Message(queue_name=queue_name, actor_name="no_such_actor", args=(), kwargs={}, options={}))
    start_worker()
    assert [c.state for c in final(store, message.message_id, S.REJECTED).history] == [S.PENDING, S.REJECTED]


def test_progress_is_visible_while_the_job_runs(
    broker: Broker, settings: Settings, queue_name: str, store: JobStatusStore, start_worker: Callable[..., Worker]
) -> None:
    release = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def long_job() -> None:
        progress(40, "halfway there")
        release.wait(20)
        progress(100)

    message = long_job.send()
    start_worker()
    # A store with its own connection reads it, as `fairway jobs show` in another process does.
    reader = JobStatusStore.from_settings(settings)
    running = wait_for(lambda: (r := reader.get(message.message_id)) and r.progress == 40 and r)
    assert running.state is S.STARTED
    assert running.note == "halfway there"
    assert running.as_json() == {
        "id": message.message_id,
        "actor": "long_job",
        "state": "STARTED",
        "progress": 40.0,
        "history": [
            {"state": c.state.value, "at": c.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
            for c in running.history
        ],
    }
    release.set()
    assert final(store, message.message_id, S.SUCCESS).progress == 100


def test_progress_from_an_async_actor(
    broker: Broker, queue_name: str, store: JobStatusStore, start_worker: Callable[..., Worker]
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    async def async_job() -> None:
        await asyncio.sleep(0)
        progress(70, "from a coroutine")

    message = async_job.send()
    start_worker()
    record = final(store, message.message_id, S.SUCCESS)
    assert (record.progress, record.note) == (70, "from a coroutine")


def test_cancel_of_a_queued_job_skips_it_as_revoked(
    broker: Broker, queue_name: str, store: JobStatusStore, start_worker: Callable[..., Worker]
) -> None:
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(name: str) -> None:
        ran.append(name)

    cancelled = job.send("cancelled")
    kept = job.send("kept")
    assert store.cancel(cancelled.message_id) is S.PENDING
    start_worker()
    final(store, kept.message_id, S.SUCCESS)
    record = final(store, cancelled.message_id, S.REVOKED)
    assert [c.state for c in record.history] == [S.PENDING, S.REVOKED]
    assert ran == ["kept"]


def test_cancel_of_a_running_job_interrupts_it_without_retry(
    broker: Broker,
    queue_name: str,
    store: JobStatusStore,
    start_worker: Callable[..., Worker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    events: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=3, min_backoff=10)
    def busy() -> None:
        events.append("started")
        for _ in range(400):
            time.sleep(0.05)
        events.append("finished")

    message = busy.send()
    start_worker()
    wait_for(lambda: states(store, message.message_id)[-1:] == [S.STARTED])
    assert store.cancel(message.message_id) is S.STARTED
    record = final(store, message.message_id, S.REVOKED)
    assert [c.state for c in record.history] == [S.PENDING, S.STARTED, S.REVOKED]
    assert events == ["started"]
    broker.join(queue_name, timeout=10_000)
    assert events == ["started"]
    assert store.cancel(message.message_id) is S.REVOKED
    # A cancel is asked for: one INFO line, no warning, no traceback.
    assert loud_lines(caplog) == []
    assert info_lines(caplog, "cancel") == [f"Message {message.message_id} of actor busy was cancelled; not retried."]


def test_cancel_of_an_unknown_job_says_so(store: JobStatusStore) -> None:
    assert store.cancel("no-such-id") is None


def test_duplicate_unique_key_is_rejected(
    broker: Broker, queue_name: str, store: JobStatusStore, start_worker: Callable[..., Worker]
) -> None:
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, unique_key=lambda order, *_: f"order-{order}")
    def charge(order: int, n: int) -> None:
        ran.append(n)

    first = charge.send(7, 1)
    second = charge.send(7, 2)
    other = charge.send(8, 3)
    start_worker()
    final(store, other.message_id, S.SUCCESS)
    # Two threads take the two order-7 messages; whichever claims the key first runs.
    outcomes = {
        m.message_id: wait_for(lambda m=m: (r := store.get(m.message_id)) and r.state.finished and r)
        for m in (first, second)
    }
    winner, loser = sorted(outcomes.values(), key=lambda r: r.state is S.REJECTED)
    assert winner.state is S.SUCCESS
    assert [c.state for c in loser.history] == [S.PENDING, S.STARTED, S.REJECTED]
    assert sorted(ran) == sorted([1 if winner.id == first.message_id else 2, 3])


def test_soft_time_limit_raises_inside_the_actor(
    broker: Broker, queue_name: str, store: JobStatusStore, start_worker: Callable[..., Worker]
) -> None:
    cleaned: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, soft_time_limit=200, max_retries=0)
    def slow() -> str:
        try:
            for _ in range(400):
                time.sleep(0.05)
        except SoftTimeLimitExceeded:
            cleaned.append("cleaned up")
        return "done"

    message = slow.send()
    start_worker()
    final(store, message.message_id, S.SUCCESS)
    assert cleaned == ["cleaned up"]


def test_soft_time_limit_raises_inside_an_async_actor_and_the_hard_limit_still_cancels(
    broker: Broker, queue_name: str, store: JobStatusStore, start_worker: Callable[..., Worker]
) -> None:
    events: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, soft_time_limit=200, max_retries=0)
    async def cleans_up() -> str:
        try:
            # Never waited out: the soft limit ends the sleep after 0.2 s.
            await asyncio.sleep(20)
        except SoftTimeLimitExceeded:
            events.append("soft limit")
        await asyncio.sleep(0.01)  # the coroutine goes on: it was not cancelled
        return "done"

    @dramatiq.actor(broker=broker, queue_name=queue_name, soft_time_limit=200, time_limit=1000, max_retries=0)
    async def overstays() -> None:
        # Neither sleep is waited out: the soft limit ends the first after 0.2 s, the hard limit
        # cancels the second at 1 s.
        try:
            await asyncio.sleep(20)
        except SoftTimeLimitExceeded:
            events.append("overstays: soft limit")
        try:
            await asyncio.sleep(20)
        except asyncio.CancelledError:
            events.append("overstays: cancelled")
            raise

    soft = cleans_up.send()
    start_worker()
    final(store, soft.message_id, S.SUCCESS)
    assert events == ["soft limit"]
    # TimeLimit starts its watcher in after_process_boot, which only the dramatiq command emits.
    next(m for m in broker.middleware if isinstance(m, TimeLimit)).after_process_boot(broker)
    hard = overstays.send()
    record = wait_for(
        lambda: (r := store.get(hard.message_id)) is not None and r.state in (S.FAILURE, S.DEAD_LETTER) and r,
        timeout=20,
    )
    assert record.state in (S.FAILURE, S.DEAD_LETTER)
    assert events == ["soft limit", "overstays: soft limit", "overstays: cancelled"]


def test_a_message_arriving_too_large_is_rejected(
    broker: Broker,
    settings: Settings,
    queue_name: str,
    store: JobStatusStore,
    start_worker: Callable[..., Worker],
) -> None:
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(payload: str) -> None:
        ran.append(len(payload))

    small = job.send("x")  # declares the queue, on RabbitMQ too
    huge = job.message("x" * (settings.max_message_bytes + 1))
    # As `send` would have: PENDING first; the body then skips every check `enqueue` makes.
    store.enqueued(huge.message_id, huge.actor_name, queue_name)
    push_raw(broker, settings, queue_name, huge.encode())
    start_worker()
    final(store, small.message_id, S.SUCCESS)
    wait_for(lambda: DeadLetterStore(settings).get(huge.message_id) is not None)
    record = final(store, huge.message_id, S.REJECTED)
    assert [c.state for c in record.history] == [S.PENDING, S.REJECTED]
    assert ran == [1]


def test_track_status_false_keeps_nothing(
    broker: Broker,
    queue_name: str,
    store: JobStatusStore,
    state_client: redis.Redis,
    start_worker: Callable[..., Worker],
) -> None:
    done = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=queue_name, track_status=False)
    def quiet() -> None:
        done.set()

    message = quiet.send()
    start_worker()
    wait_for(done.is_set)
    broker.join(queue_name, timeout=10_000)
    assert not state_client.exists(store.job_key(message.message_id))


STATUS_APP = """
    import os
    import time

    import dramatiq

    from dramatiq_fairway import setup
    from dramatiq_fairway.connections import state_store_client
    from dramatiq_fairway.settings import load_settings

    broker = setup()
    runs = state_store_client(load_settings())

    @dramatiq.actor(broker=broker, queue_name=os.environ["TEST_QUEUE"])
    def once(n):
        time.sleep(0.02)
        runs.rpush(os.environ["FAIRWAY_NAMESPACE"] + ":runs", f"{n}:{os.getpid()}")
"""


def test_duplicate_unique_key_is_skipped_across_two_processes(  # noqa: PLR0917 (fixtures)
    broker: Broker,
    settings: Settings,
    queue_name: str,
    store: JobStatusStore,
    state_client: redis.Redis,
    short_tmp: Path,
) -> None:
    (short_tmp / "status_app.py").write_text(textwrap.dedent(STATUS_APP))

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def once(n: int) -> None:
        raise AssertionError("runs in the worker processes only")

    messages = [once.send_with_options(args=(n,), unique_key="nightly-report") for n in range(12)]
    messages += [once.send_with_options(args=(100 + n,), unique_key=f"other-{n}") for n in range(12)]
    env = {**settings_env(settings), "TEST_QUEUE": queue_name, "PYTHONPATH": str(short_tmp)}
    with dramatiq_command("status_app", env, processes=2, threads=2, log_file=short_tmp / "log"):
        for message in messages:
            wait_for(
                lambda m=message: (r := store.get(m.message_id)) and r.state in (S.SUCCESS, S.REJECTED), timeout=60
            )
    runs = [item.decode().split(":") for item in state_client.lrange(f"{settings.namespace}:runs", 0, -1)]
    ran = sorted(int(n) for n, _pid in runs)
    assert len([n for n in ran if n < 100]) == 1
    assert [n for n in ran if n >= 100] == list(range(100, 112))
    rejected = [m for m in messages if store.get(m.message_id).state is S.REJECTED]  # type: ignore[union-attr]
    assert len(rejected) == 11


def run_jobs_cli(*argv: str) -> None:
    """The `fairway jobs` verbs as `fairway` registers them."""
    parser = argparse.ArgumentParser(prog="fairway")
    jobs_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_jobs_cli_show_and_cancel(  # noqa: PLR0917 (fixtures)
    broker: Broker,
    settings: Settings,
    queue_name: str,
    store: JobStatusStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def later() -> None:
        pass

    message = later.send()
    run_jobs_cli("jobs", "show", message.message_id, "--json")
    shown = json.loads(capsys.readouterr().out)
    assert shown == store.get(message.message_id).as_json()  # type: ignore[union-attr]
    assert shown["state"] == "PENDING"
    assert set(shown) == {"id", "actor", "state", "progress", "history"}

    run_jobs_cli("jobs", "cancel", message.message_id, "--json")
    assert json.loads(capsys.readouterr().out) == {
        "id": message.message_id,
        "state": "PENDING",
        "cancel_requested": True,
    }
    run_jobs_cli("jobs", "show", message.message_id)
    assert "cancel requested" in capsys.readouterr().out

    with pytest.raises(CommandError, match="no status for job 'nope'"):
        run_jobs_cli("jobs", "show", "nope")
    store.finish(message.message_id, S.REVOKED, "later", queue_name)
    with pytest.raises(CommandError, match=r"already finished \(REVOKED\)"):
        run_jobs_cli("jobs", "cancel", message.message_id)


def test_cancel_of_a_running_async_job(
    broker: Broker, queue_name: str, store: JobStatusStore, start_worker: Callable[..., Worker]
) -> None:
    events: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=3, min_backoff=10)
    async def busy_async() -> None:
        events.append("started")
        # Never waited out: the cancel ends it within ~0.5 s. The bound only keeps the worker's
        # teardown from hanging if cancelling broke.
        await asyncio.sleep(20)
        events.append("finished")

    message = busy_async.send()
    start_worker()
    wait_for(lambda: states(store, message.message_id)[-1:] == [S.STARTED])
    store.cancel(message.message_id)
    record = final(store, message.message_id, S.REVOKED)
    assert [c.state for c in record.history] == [S.PENDING, S.STARTED, S.REVOKED]
    assert events == ["started"]


def test_unique_key_with_the_state_store_down(settings: Settings, queue_name: str) -> None:
    down = JobStatusStore.from_settings(settings.model_copy(update={"state_url": f"redis://127.0.0.1:{free_port()}/0"}))
    broker = StubBroker()
    middleware = JobStatus(settings=settings, store=down)
    broker.add_middleware(middleware)

    @dramatiq.actor(broker=broker, queue_name=queue_name, unique_key="k")
    def lenient() -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name=queue_name, unique_key="k", unique_strict=True)
    def strict() -> None:
        pass

    before = middleware.dropped_updates
    lenient_message = MessageProxy(lenient.message())
    try:
        middleware.before_process_message(broker, lenient_message)
        # The cancel check and the unique claim, both synchronous; the outcome below is queued for
        # the writer thread, whose failed flush is counted whenever it runs.
        assert middleware.dropped_updates == before + 2
        middleware.after_process_message(broker, lenient_message)
        with pytest.raises(UniqueKeyUnavailable, match="unique_key 'k'"):
            middleware.before_process_message(broker, MessageProxy(strict.message()))
    finally:
        # The count is shared by the process: no write of this test may land in the next one's.
        middleware.after_worker_shutdown(broker, None)
