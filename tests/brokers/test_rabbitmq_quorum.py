"""Quorum mode (``FAIRWAY_RABBITMQ__QUEUE_TYPE=quorum``) on the shared RabbitMQ node: what is
declared, and a retry, a delay and a dead letter going round through quorum queues.

RabbitMQ answers a redeclaration with other arguments with 406 PRECONDITION_FAILED and one with
the same arguments with DeclareOk: that is how these tests read a queue's arguments (the
management API is not enabled here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pytest
import redis
from dramatiq import Broker, Message, Worker
from dramatiq.common import dq_name, xq_name

from dramatiq_fairway.brokers.rabbitmq import FairRabbitmqBroker
from dramatiq_fairway.brokers.rabbitmq_layout import QUORUM_DELIVERY_LIMIT, QueueLayout, QueueRole
from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.errors import PermanentError
from dramatiq_fairway.middlewares.dead_letters import DeadLetters
from dramatiq_fairway.settings import RabbitmqSettings, Settings

from ..conftest import REDIS_URL
from ..support.helpers import wait_for


@pytest.fixture
def settings(namespace: str, short_tmp: Path, state_client: redis.Redis) -> Settings:
    return Settings(
        broker="rabbitmq",
        namespace=namespace,
        state_url=REDIS_URL,
        data_dir=short_tmp,
        rabbitmq=RabbitmqSettings(queue_type="quorum"),
    )


@pytest.fixture
def channel(settings: Settings) -> Iterator[Callable[[], Any]]:
    """A fresh channel per call (a 406 closes the channel it happened on)."""
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    yield connection.channel
    connection.close()


def redeclare(channel: Callable[[], Any], name: str, arguments: dict[str, Any]) -> str:
    """``ok`` when ``name`` exists with exactly ``arguments``, else RabbitMQ's reply code and text (406 ...)."""
    try:
        channel().queue_declare(queue=name, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as error:
        return f"{error.reply_code} {error.reply_text}"
    return "ok"


def amqp_queues(broker: FairRabbitmqBroker, queue_name: str) -> dict[str, QueueRole]:
    return {
        queue_name: QueueRole.CANONICAL,
        dq_name(queue_name): QueueRole.DELAY,
        xq_name(queue_name): QueueRole.DEAD,
        **dict.fromkeys(broker.level_queues(queue_name), QueueRole.LEVEL),
    }


def test_quorum_mode_declares_quorum_queues_without_max_priority_and_with_the_delivery_limit(
    broker: Broker, queue_name: str, channel: Callable[[], Any]
) -> None:
    assert isinstance(broker, FairRabbitmqBroker)
    broker.declare_queue(queue_name, ensure=True)
    assert broker.max_priority is None
    quorum = QueueLayout("quorum")
    for name, role in amqp_queues(broker, queue_name).items():
        arguments = quorum.arguments(role, queue_name)
        assert arguments["x-queue-type"] == "quorum"
        assert arguments["x-delivery-limit"] == QUORUM_DELIVERY_LIMIT
        assert "x-max-priority" not in arguments
        assert redeclare(channel, name, arguments) == "ok", name
        # Each of them refuses what a classic queue of that role or RabbitMQ 4's default delivery
        # limit would declare: it is a quorum queue (which cannot have x-max-priority at all: see
        # the next test) with fairway's delivery limit.
        classic = QueueLayout("classic", max_priority=5).arguments(role, queue_name)
        assert "inequivalent arg" in redeclare(channel, name, classic), name
        assert "inequivalent arg 'x-delivery-limit'" in redeclare(channel, name, {**arguments, "x-delivery-limit": 20})


def test_rabbitmq_refuses_a_quorum_queue_with_a_priority(queue_name: str, channel: Callable[[], Any]) -> None:
    arguments = {**QueueLayout("quorum").arguments(QueueRole.LEVEL, queue_name), "x-max-priority": 5}
    assert "x-max-priority" in redeclare(channel, f"{queue_name}.prioritised", arguments)


def test_park_and_tenant_queues_are_accepted_as_quorum_queues(queue_name: str, channel: Callable[[], Any]) -> None:
    layout = QueueLayout("quorum")
    park, tenant = f"{queue_name}.park.1000", f"{queue_name}.tenant.acme"
    try:
        ready = layout.declare(channel(), QueueRole.LEVEL, f"{queue_name}.fair.3.0", queue_name)
        layout.declare(channel(), QueueRole.PARK, park, queue_name, ready_queue=ready.method.queue, ttl_ms=1000)
        layout.declare(channel(), QueueRole.TENANT, tenant, queue_name, expires_ms=60_000)
        assert (
            redeclare(
                channel, park, layout.arguments(QueueRole.PARK, queue_name, ready_queue=ready.method.queue, ttl_ms=1000)
            )
            == "ok"
        )
        assert redeclare(channel, tenant, layout.arguments(QueueRole.TENANT, queue_name, expires_ms=60_000)) == "ok"
    finally:
        cleanup = channel()
        for name in (park, tenant, f"{queue_name}.fair.3.0", xq_name(queue_name)):
            cleanup.queue_delete(name)


def test_retry_delay_and_dead_letter_round_trip_through_quorum_queues(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    attempts: list[int] = []
    delayed: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, min_backoff=10, max_backoff=100)
    def flaky() -> None:
        attempts.append(1)
        if len(attempts) <= 2:
            raise ConnectionResetError(104, "upstream reset the connection")

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def later(n: int) -> None:
        delayed.append(n)

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def doomed() -> None:
        raise PermanentError("no such paper")

    flaky.send()
    later.send_with_options(args=(7,), delay=200)
    dead = doomed.send()
    start_worker()
    wait_for(lambda: len(attempts) == 3 and delayed == [7], timeout=20)
    store = next(m for m in broker.middleware if isinstance(m, DeadLetters)).store
    record = wait_for(lambda: store.get(dead.message_id), timeout=20)
    assert record is not None
    assert "PermanentError" in str(record.error_type)
    assert record.actor == "doomed"


def test_a_message_nacked_without_a_record_is_dead_lettered_to_the_quorum_xq(
    broker: Broker, queue_name: str, channel: Callable[[], Any]
) -> None:
    assert isinstance(broker, FairRabbitmqBroker)
    broker.declare_queue(queue_name, ensure=True)
    level_queue = broker.level_queues(queue_name)[0]
    message: Message[Any] = Message(queue_name=queue_name, actor_name="gone", args=(), kwargs={}, options={})
    publisher = channel()
    publisher.basic_publish(exchange="", routing_key=level_queue, body=message.encode())
    consumer = channel()
    method = wait_for(lambda: consumer.basic_get(level_queue)[0], timeout=10)
    consumer.basic_nack(method.delivery_tag, requeue=False)
    dead = wait_for(lambda: consumer.basic_get(xq_name(queue_name), auto_ack=True)[2], timeout=10)
    assert Message.decode(dead).message_id == message.message_id
