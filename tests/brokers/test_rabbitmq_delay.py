"""Delays beyond the horizon wait in park queues on the shared RabbitMQ, not unacked in a worker
(brokers/rabbitmq_delay.py; the bucket math alone is in tests/unit/test_rabbitmq_delay.py, the
consumer_timeout itself in tests/chaos/test_long_delay.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import dramatiq
import pika
import pytest
from dramatiq import Broker, Message, Middleware, Worker
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import Retry
from dramatiq.middleware import CurrentMessage

from dramatiq_fairway.brokers.rabbitmq import FairRabbitmqBroker
from dramatiq_fairway.brokers.rabbitmq_delay import PARK_BUCKETS_MS, ParkQueues, park_queue_name
from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.middlewares.consumer_hooks import HELD_SINCE
from dramatiq_fairway.settings import Settings

from ..support.helpers import wait_for
from .test_rabbitmq_fair import delete_level_queues

pytestmark = pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)

HORIZON_MS = 1_000


@pytest.fixture
def rabbit(broker: Broker, settings: Settings) -> Iterator[FairRabbitmqBroker]:
    """The broker with a 1 s horizon; its park queues are deleted after the test."""
    assert isinstance(broker, FairRabbitmqBroker)
    broker.park_queues = ParkQueues(HORIZON_MS, broker.layout)
    yield broker
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    channel = connection.channel()
    for queue in broker.get_declared_queues():
        for bucket in PARK_BUCKETS_MS:
            channel.queue_delete(park_queue_name(dq_name(queue), bucket))
    connection.close()
    delete_level_queues(broker, settings)


def ready(broker: FairRabbitmqBroker, name: str) -> int:
    """Ready messages of ``name``; 0 while it is not declared yet."""
    try:
        return broker.passive_count(name)
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == 404:
            return 0
        raise


def test_a_delay_beyond_the_horizon_is_parked_not_held_and_runs_within_a_second_of_its_eta(
    rabbit: FairRabbitmqBroker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    ran_at: list[int] = []

    @dramatiq.actor(broker=rabbit, queue_name=queue_name)
    def job() -> None:
        ran_at.append(current_millis())

    start_worker()
    sent = job.send_with_options(delay=5_000)
    eta = int(sent.options["eta"])
    park = park_queue_name(dq_name(queue_name), 4_000)
    # Ready in RabbitMQ while the worker runs: no worker holds it.
    assert ready(rabbit, park) == 1
    time.sleep(1.0)
    assert ready(rabbit, park) == 1
    assert ready(rabbit, dq_name(queue_name)) == 0
    wait_for(lambda: ran_at, timeout=10)
    assert eta <= ran_at[0] <= eta + 1_000
    assert ready(rabbit, park) == 0
    time.sleep(0.3)
    assert len(ran_at) == 1


def test_a_retry_with_a_long_backoff_is_parked(
    rabbit: FairRabbitmqBroker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    ran_at: list[int] = []

    @dramatiq.actor(broker=rabbit, queue_name=queue_name, max_retries=3)
    def flaky() -> None:
        ran_at.append(current_millis())
        if len(ran_at) == 1:
            raise Retry(delay=3_000)

    flaky.send()
    start_worker()
    park = park_queue_name(dq_name(queue_name), 2_000)
    wait_for(lambda: ready(rabbit, park) == 1, timeout=10)
    wait_for(lambda: len(ran_at) == 2, timeout=10)
    assert 3_000 <= ran_at[1] - ran_at[0] <= 4_000


class HoldOnce(Middleware):
    """Holds every message back 3 s the first time it is seen (a breaker or a limit would)."""

    def hold(self, broker: Broker, message: Message) -> int | None:
        return None if HELD_SINCE in message.options else 3_000


def test_a_long_hold_back_is_parked(
    rabbit: FairRabbitmqBroker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    rabbit.add_middleware(HoldOnce())
    rabbit.add_middleware(CurrentMessage())
    held_since: list[int] = []

    @dramatiq.actor(broker=rabbit, queue_name=queue_name, max_retries=0)
    def job() -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        held_since.append(int(message.options[HELD_SINCE]))

    job.send()
    start_worker()
    park = park_queue_name(dq_name(queue_name), 2_000)
    wait_for(lambda: ready(rabbit, park) == 1, timeout=10)
    wait_for(lambda: held_since, timeout=10)
    assert current_millis() - held_since[0] >= 3_000


def test_a_message_back_early_from_its_park_queue_is_parked_again(
    rabbit: FairRabbitmqBroker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    """As after clock skew: published straight to the delay queue with an eta 3 s away."""
    ran_at: list[int] = []

    @dramatiq.actor(broker=rabbit, queue_name=queue_name)
    def job() -> None:
        ran_at.append(current_millis())

    eta = current_millis() + 3_000
    early = job.message().copy(queue_name=dq_name(queue_name), options={"eta": eta})
    rabbit.declare_queue(queue_name, ensure=True)
    rabbit.channel.basic_publish("", dq_name(queue_name), early.encode(), pika.BasicProperties(delivery_mode=2))
    start_worker()
    park = park_queue_name(dq_name(queue_name), 2_000)
    wait_for(lambda: ready(rabbit, park) == 1, timeout=5)
    wait_for(lambda: ran_at, timeout=10)
    assert eta <= ran_at[0] <= eta + 1_000


def test_parked_messages_count_as_delayed_and_flush_purges_them(rabbit: FairRabbitmqBroker, queue_name: str) -> None:
    @dramatiq.actor(broker=rabbit, queue_name=queue_name)
    def job() -> None:
        raise AssertionError("flushed: never runs")

    job.send_with_options(delay=5_000)
    job.send_with_options(delay=500)
    park = park_queue_name(dq_name(queue_name), 4_000)
    assert ready(rabbit, park) == 1
    assert rabbit.get_queue_message_counts(queue_name) == (0, 2, 0)
    rabbit.flush(queue_name)
    assert ready(rabbit, park) == 0
    assert rabbit.get_queue_message_counts(queue_name) == (0, 0, 0)
