"""Fairway's consumer rules on real brokers: undecodable bodies are reported and removed, held
messages wait on the delay queue without firing hooks or using a retry."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
import pika
from dramatiq import Broker, Message, Middleware, Worker

from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.middlewares.consumer_hooks import HELD_SINCE
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import Settings

from ..support.helpers import wait_for


class Recorder(Middleware):
    def __init__(self) -> None:
        self.undecodable: list[tuple[str, bytes]] = []
        self.hooks: list[str] = []

    def record_undecodable(self, broker: Broker, queue_name: str, body: bytes, error: Exception) -> None:
        self.undecodable.append((queue_name, body))

    def before_process_message(self, broker: Broker, message: Message) -> None:
        self.hooks.append(f"process:{message.options.get(HELD_SINCE) is not None}")

    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        self.hooks.append("enqueue")


class HoldOnce(Middleware):
    """Holds every message once for 200 ms."""

    def hold(self, broker: Broker, message: Message) -> int | None:
        return None if HELD_SINCE in message.options else 200


def push_raw(broker: Broker, settings: Settings, queue_name: str, body: bytes) -> None:
    if isinstance(broker, FairRedisBroker):
        broker.push_body(queue_name, body, level=Priority.NORMAL, tenant="default")
        return
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    connection.channel().basic_publish(exchange="", routing_key=queue_name, body=body)
    connection.close()


def test_undecodable_body_is_reported_and_the_rest_run(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    recorder = Recorder()
    broker.add_middleware(recorder)
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def keep(x: int) -> None:
        done.append(x)

    keep.send(1)
    push_raw(broker, settings, queue_name, b"\xff not json")
    keep.send(2)
    start_worker()
    wait_for(lambda: len(done) == 2 and recorder.undecodable)
    assert sorted(done) == [1, 2]
    assert recorder.undecodable == [(queue_name, b"\xff not json")]
    broker.join(queue_name, timeout=10_000)


def test_held_message_waits_without_hooks_or_retry(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    recorder = Recorder()
    broker.add_middleware(recorder)
    broker.add_middleware(HoldOnce())
    runs: list[dict[str, object]] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def job() -> None:
        runs.append(dict(dramatiq.middleware.CurrentMessage.get_current_message().options))

    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    job.send()
    start_worker()
    wait_for(lambda: runs, timeout=20)
    assert len(runs) == 1
    assert HELD_SINCE in runs[0]
    assert runs[0].get("retries", 0) == 0
    # Sending enqueued once; the hold itself fired no hook before the job finally ran. The move out of
    # the delay queue is Dramatiq's own enqueue.
    assert recorder.hooks.count("process:True") == 1
    assert "process:False" not in recorder.hooks
