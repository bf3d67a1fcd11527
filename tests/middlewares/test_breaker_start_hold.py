"""A job a worker already holds when its breaker opens is held back when a worker thread takes it,
on real Redis and real RabbitMQ: it waits for the breaker like any held job, keeps its retries and
no middleware hook sees the hold."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Broker, Middleware, Worker
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.middleware import CurrentMessage

from dramatiq_fairway.errors import TransientError
from dramatiq_fairway.middlewares.consumer_hooks import HELD_SINCE
from dramatiq_fairway.settings import BreakerSettings, Settings
from dramatiq_fairway.store.breakers import RedisBreakerStore
from dramatiq_fairway.store.dead_letters import DeadLetterStore
from dramatiq_fairway.store.status import JobState, JobStatusStore

from ..conftest import REDIS_URL
from ..support.helpers import wait_for


@pytest.fixture
def settings(broker_kind: str, namespace: str, short_tmp: Path, state_client: redis.Redis) -> Settings:
    return Settings(
        broker=broker_kind,  # type: ignore[arg-type]
        namespace=namespace,
        state_url=REDIS_URL,
        data_dir=short_tmp,
        breaker=BreakerSettings(minimum_calls=1, window_size=1, open_duration=1.0, half_open_max_calls=1),
    )


class Hooks(Middleware):
    """The worker-side hooks fired per message id (acks of delay-queue copies left out: moving a
    message out of its delay queue is not an outcome)."""

    def __init__(self) -> None:
        self.fired: dict[str, list[str]] = defaultdict(list)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self.fired[message.message_id].append("before_process")

    def after_process_message(self, broker: Broker, message: MessageProxy, **_outcome: Any) -> None:
        self.fired[message.message_id].append("after_process")

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self.fired[message.message_id].append("skip")

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        if message.queue_name == q_name(message.queue_name):
            self.fired[message.message_id].append("ack")

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self.fired[message.message_id].append("nack")


def test_a_prefetched_job_is_held_when_its_breaker_opened_meanwhile(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    broker.add_middleware(CurrentMessage())
    hooks = Hooks()
    broker.add_middleware(hooks)
    release = threading.Event()
    calls: list[tuple[float, str]] = []
    finished: dict[str, dict[str, Any]] = {}

    @dramatiq.actor(broker=broker, queue_name=queue_name, breaker="dep", max_retries=3)
    def fetch(name: str) -> None:
        calls.append((time.time(), name))
        if name == "first":
            release.wait(timeout=10)
            raise TransientError("dependency down")
        message = CurrentMessage.get_current_message()
        assert message is not None
        finished[name] = dict(message.options)

    fetch.send_with_options(args=("first",), max_retries=0)
    worker = start_worker(threads=1)
    wait_for(lambda: calls)
    prefetched = fetch.send("prefetched")
    # Let through by the consumer while the breaker was closed, waiting in the worker's own queue.
    wait_for(lambda: worker.work_queue.qsize() >= 1)
    release.set()
    store = RedisBreakerStore.from_settings(settings)
    opened = wait_for(lambda: (s := store.get("dep")) is not None and s.state == "open" and s)
    wait_for(lambda: "prefetched" in finished, timeout=20)

    [(ran_at, _name)] = [call for call in calls if call[1] == "prefetched"]
    assert opened.retry_at is not None
    assert ran_at >= opened.retry_at
    options = finished["prefetched"]
    assert options.get("retries", 0) == 0
    assert HELD_SINCE in options
    # Taken, held, run: only the run fired hooks.
    wait_for(lambda: hooks.fired[prefetched.message_id][-1:] == ["ack"])
    assert hooks.fired[prefetched.message_id] == ["before_process", "after_process", "ack"]
    status = JobStatusStore.from_settings(settings)
    record = wait_for(
        lambda: (r := status.get(prefetched.message_id)) is not None and r.state is JobState.SUCCESS and r
    )
    assert [change.state for change in record.history] == [JobState.PENDING, JobState.STARTED, JobState.SUCCESS]
    assert [dead.args[0] for dead in DeadLetterStore(settings).list()] == ["first"]
