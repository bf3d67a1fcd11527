"""Fair levels and tenants on RabbitMQ: the §14 rule as FairwayRabbitmqBroker approximates it.

The rule itself (``Picker``) is checked without a server in tests/unit/test_rabbitmq_picker.py; the
broker tests here run on the real RabbitMQ, with one consumer whose deliveries are awaited before
picking, so that what is checked is the rule and not the order in which RabbitMQ happened to deliver.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from itertools import count

import dramatiq
import pika
import pytest
from dramatiq import Broker, Message, Middleware, Worker
from dramatiq.middleware import CurrentMessage

from dramatiq_fairway.brokers.delivery import held_copy
from dramatiq_fairway.brokers.rabbitmq import FairwayRabbitmqBroker
from dramatiq_fairway.brokers.rabbitmq_consumer import FairPickingConsumer
from dramatiq_fairway.brokers.rabbitmq_tenants import lane_of, level_queue
from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.middlewares.consumer_hooks import HELD_SINCE
from dramatiq_fairway.settings import Settings

from ..support.helpers import wait_for
from ..unit.test_rabbitmq_picker import B, C, H, L, N


def delete_level_queues(broker: Broker, settings: Settings) -> None:
    """Delete the level queues of every queue the test declared (the conftest deletes the others)."""
    if not isinstance(broker, FairwayRabbitmqBroker):
        return
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    channel = connection.channel()
    for queue in broker.get_declared_queues():
        for name in broker.level_queues(queue):
            channel.queue_delete(name)
    connection.close()


@pytest.fixture
def rabbit(broker: Broker, settings: Settings) -> Iterator[FairwayRabbitmqBroker]:
    assert isinstance(broker, FairwayRabbitmqBroker)
    yield broker
    delete_level_queues(broker, settings)


def two_lanes(broker: FairwayRabbitmqBroker, count_: int) -> list[str]:
    """``count_`` tenants on pairwise different lanes."""
    tenants: dict[int, str] = {}
    for number in count():
        tenants.setdefault(lane_of(f"t{number}", broker.lanes), f"t{number}")
        if len(tenants) == count_:
            return list(tenants.values())
    raise AssertionError("unreachable")


# The broker on the real RabbitMQ.


def fill(consumer: FairPickingConsumer, held: int) -> None:
    """Let RabbitMQ deliver until ``consumer`` holds ``held`` messages (acks queued by ``take`` go first)."""

    def enough() -> bool:
        consumer._process_events(0.05)
        return consumer.held() >= held

    wait_for(enough, timeout=10)


def take(consumer: FairPickingConsumer, n: int, held: Callable[[list[Message]], int] | None = None) -> list[Message]:
    """Pick ``n`` messages one at a time, acking each before the next pick; with ``held``, first
    wait for the deliveries that make the consumer hold ``held(taken so far)`` messages."""
    taken: list[Message] = []
    for _ in range(n):
        if held is not None:
            fill(consumer, held(taken))
        proxy = wait_for(lambda: next(consumer))
        consumer.ack(proxy)
        taken.append(proxy._message)
    return taken


@pytest.fixture
def consumer_of(rabbit: FairwayRabbitmqBroker) -> Iterator[Callable[[str, int], FairPickingConsumer]]:
    consumers: list[FairPickingConsumer] = []

    def open_consumer(queue_name: str, prefetch: int) -> FairPickingConsumer:
        consumer = rabbit.consume(queue_name, prefetch=prefetch, timeout=100)
        assert isinstance(consumer, FairPickingConsumer)
        consumers.append(consumer)
        return consumer

    yield open_consumer
    for consumer in consumers:
        consumer.close()


def declare(broker: Broker, queue_name: str) -> dramatiq.Actor[..., None]:
    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name=f"job_{queue_name}")
    def job(n: int) -> None:
        pass

    return job


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_levels_are_served_in_priority_order(
    rabbit: FairwayRabbitmqBroker, queue_name: str, consumer_of: Callable[[str, int], FairPickingConsumer]
) -> None:
    job = declare(rabbit, queue_name)
    for level in (B, L, N, H, C):
        job.send_with_options(args=(int(level),), priority_level=level.name)
    assert rabbit.get_queue_message_counts(queue_name) == (5, 0, 0)
    consumer = consumer_of(queue_name, 1)
    fill(consumer, 5)
    assert [m.args[0] for m in take(consumer, 5)] == [C, H, N, L, B]


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_fifo_within_tenant_and_level_and_tenants_interleaved(
    rabbit: FairwayRabbitmqBroker, queue_name: str, consumer_of: Callable[[str, int], FairPickingConsumer]
) -> None:
    job = declare(rabbit, queue_name)
    first, second = two_lanes(rabbit, 2)
    for tenant in (first, second):  # the first tenant's whole backlog is older
        for n in range(20):
            job.send_with_options(args=(n,), tenant=tenant)
    consumer = consumer_of(queue_name, 4)
    fill(consumer, 16)
    head = take(consumer, 8)
    assert [m.options["tenant"] for m in head] == [first, second] * 4
    rest = take(consumer, 32)
    for tenant in (first, second):
        assert [m.args[0] for m in [*head, *rest] if m.options["tenant"] == tenant] == list(range(20))


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_a_waiting_batch_is_served_within_the_rule_under_high_load(
    rabbit: FairwayRabbitmqBroker, queue_name: str, consumer_of: Callable[[str, int], FairPickingConsumer]
) -> None:
    job = declare(rabbit, queue_name)
    for n in range(40):
        job.send_with_options(args=(n,), priority_level="high")
    for n in range(3):
        job.send_with_options(args=(100 + n,), priority_level="batch")
    consumer = consumer_of(queue_name, 2)

    def in_hand(taken: list[Message]) -> int:
        # 2 x prefetch per AMQP queue, as long as it has that many left
        batch = sum(int(m.options["priority_level"]) == B for m in taken)
        return 4 + min(4, 3 - batch)

    served = [m.options["priority_level"] for m in take(consumer, 12, in_hand)]
    # Every 4th pick goes to the waiting lower level, once its head has been delivered.
    assert served == [H, H, H, B] * 3


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_nothing_lost_or_duplicated_under_concurrent_enqueue_and_consume(
    rabbit: FairwayRabbitmqBroker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    seen: list[str] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=rabbit, queue_name=queue_name)
    def record(key: str) -> None:
        with lock:
            seen.append(key)

    start_worker(threads=4)
    start_worker(threads=2)

    def produce(producer: int) -> None:
        for n in range(150):
            record.send_with_options(
                args=(f"{producer}-{n}",), priority_level=1 + n % 5, tenant=f"tenant{(producer + n) % 7}"
            )

    producers = [threading.Thread(target=produce, args=(p,)) for p in range(3)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    wait_for(lambda: len(seen) >= 450, timeout=30)
    rabbit.join(queue_name, timeout=20_000)
    assert sorted(seen) == sorted(f"{p}-{n}" for p in range(3) for n in range(150))


class HoldOnce(Middleware):
    def hold(self, broker: Broker, message: Message) -> int | None:
        return None if HELD_SINCE in message.options else 200


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_held_back_messages_keep_their_level_and_tenant(
    rabbit: FairwayRabbitmqBroker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    rabbit.add_middleware(HoldOnce())
    rabbit.add_middleware(CurrentMessage())
    runs: list[dict[str, object]] = []

    @dramatiq.actor(broker=rabbit, queue_name=queue_name, max_retries=0)
    def job() -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        runs.append(dict(message.options))

    sent = job.send_with_options(priority_level="low", tenant="acme")
    start_worker()
    wait_for(lambda: runs, timeout=20)
    assert HELD_SINCE in runs[0]
    assert (runs[0]["priority_level"], runs[0]["tenant"]) == (int(L), "acme")
    back = held_copy(sent, 200).copy(queue_name=queue_name)
    assert rabbit.route(back) == level_queue(queue_name, L, lane_of("acme", rabbit.lanes))


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_messages_held_by_a_stopped_worker_go_back_and_run_once(
    rabbit: FairwayRabbitmqBroker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    done: list[int] = []
    gate = threading.Event()

    @dramatiq.actor(broker=rabbit, queue_name=queue_name)
    def slow(n: int) -> None:
        gate.wait(5)
        done.append(n)

    for n in range(30):
        slow.send_with_options(args=(n,), tenant=f"t{n % 3}", priority_level=1 + n % 5)
    first = start_worker(threads=2)
    wait_for(lambda: rabbit.get_queue_message_counts(queue_name)[0] < 30)
    gate.set()
    first.stop()
    start_worker(threads=2)
    rabbit.join(queue_name, timeout=20_000)
    assert sorted(done) == list(range(30))


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_messages_left_on_the_old_single_queue_are_still_served(
    rabbit: FairwayRabbitmqBroker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    done: list[str] = []

    @dramatiq.actor(broker=rabbit, queue_name=queue_name)
    def old(tag: str) -> None:
        done.append(tag)

    rabbit.declare_queue(queue_name, ensure=True)
    leftover = old.message_with_options(args=("before the upgrade",), priority_level=2, tenant="acme")
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    connection.channel().basic_publish(exchange="", routing_key=queue_name, body=leftover.encode())
    connection.close()
    start_worker()
    wait_for(lambda: done)
    assert done == ["before the upgrade"]


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_a_deleted_level_queue_is_declared_again_on_send(
    rabbit: FairwayRabbitmqBroker, settings: Settings, queue_name: str
) -> None:
    job = declare(rabbit, queue_name)
    job.send(1)
    target = level_queue(queue_name, N, lane_of("default", rabbit.lanes))
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    connection.channel().queue_delete(target)
    connection.close()
    # Publisher confirms report the message as unroutable; the broker declares its queues again.
    job.send(2)
    assert rabbit.ready_by_level(queue_name) == {N: 1}


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_held_messages_go_to_idle_threads_before_the_next_poll(
    rabbit: FairwayRabbitmqBroker,
    queue_name: str,
    consumer_of: Callable[[str, int], FairPickingConsumer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every pick would poll first if polls were only spaced in time: with worker threads about to
    # run dry (fewer than _refill_at messages out), what is held goes out first, then the poll.
    monkeypatch.setattr("dramatiq_fairway.brokers.rabbitmq_consumer.POLL_INTERVAL", 0.0)
    job = declare(rabbit, queue_name)
    for n in range(12):
        job.send(n)
    consumer = consumer_of(queue_name, 8)
    fill(consumer, 12)
    polls = 0
    poll = consumer.connection.process_data_events

    def counted(time_limit: float = 0) -> None:
        nonlocal polls
        polls += 1
        poll(time_limit=time_limit)

    monkeypatch.setattr(consumer.connection, "process_data_events", counted)
    handed = [next(consumer) for _ in range(consumer._refill_at)]
    assert polls == 0
    next(consumer)
    assert polls == 1
    assert [proxy.args[0] for proxy in handed] == list(range(consumer._refill_at))


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_acks_leave_with_the_batch_not_at_the_next_poll(
    rabbit: FairwayRabbitmqBroker, queue_name: str, consumer_of: Callable[[str, int], FairPickingConsumer]
) -> None:
    job = declare(rabbit, queue_name)
    for n in range(3):
        job.send(n)
    consumer = consumer_of(queue_name, 4)
    fill(consumer, 3)
    for proxy in [next(consumer) for _ in range(3)]:
        consumer.ack(proxy)
    consumer._send_settles()
    # Written to the socket, not left in pika's buffer until a poll finds it writable.
    assert consumer.connection._impl._transport.get_write_buffer_size() == 0
