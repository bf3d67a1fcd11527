"""``ops.migrate``: stock Dramatiq's queues adopted into fairway's layout, on real Redis and RabbitMQ."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import dramatiq
import pika
import pytest
from dramatiq import Broker, Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, xq_name
from dramatiq.errors import ConnectionClosed

from dramatiq_fairway.brokers import RABBITMQ_MAX_PRIORITY
from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.brokers.rabbitmq import FairRabbitmqBroker
from dramatiq_fairway.brokers.rabbitmq_tenants import lane_of, level_queue
from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.ops.controls import UnknownQueue
from dramatiq_fairway.ops.migrate import Migrated, migrate
from dramatiq_fairway.ops.migrate_rabbitmq import PARKING_SUFFIX, _delete_if_empty
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.keys import stock_heartbeats_key

from ..conftest import SINGLE_REDIS_URL
from ..support.helpers import wait_for
from ..support.stock_queues import (
    URGENT,
    amqp_count,
    dead_moved_by_migrate,
    delete_stock_queues,
    fill_stock_queue,
    note_of,
    redeclared_by_migrate,
    stock_broker,
    stock_counts,
    stock_namespace,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Stock Dramatiq runs on one Redis only: migrations run there, in a cluster run of the suite too."""
    return settings.model_copy(update={"redis_url": SINGLE_REDIS_URL})


@pytest.fixture(autouse=True)
def stock_cleanup(settings: Settings, queue_name: str) -> Iterator[None]:
    yield
    delete_stock_queues(settings, queue_name)


def run_migrate(broker: Broker, settings: Settings, queue_name: str, *, dry_run: bool = False) -> Migrated:
    [report] = migrate(broker, [queue_name], dry_run=dry_run, stock_namespace=stock_namespace(settings))
    return report


def fairway_dead_count(broker: Broker, settings: Settings, queue_name: str) -> int:
    """Dead messages in fairway's layout: the broker's dead set on Redis, ``.XQ`` on RabbitMQ."""
    if isinstance(broker, FairRedisBroker):
        return int(broker.client.zcard(broker._queue_prefix(queue_name) + ":xq"))
    return amqp_count(settings, xq_name(queue_name)) or 0


def test_a_stock_queue_of_500_is_moved_and_each_job_runs_once_with_its_args(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    fill = fill_stock_queue(settings, queue_name, ready=400, delayed=60, dead=40)
    runs: Counter[int] = Counter()
    notes: dict[int, str] = {}
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name="record")
    def record(i: int, note: str) -> None:
        with lock:
            runs[i] += 1
            notes[i] = note

    if settings.broker == "rabbitmq":
        # The 406 fairway gets today from a queue stock Dramatiq declared.
        with pytest.raises(ConnectionClosed, match=f"PRECONDITION_FAILED.*`fairway migrate {queue_name}`"):
            record.send(-1, "refused")

    report = run_migrate(broker, settings, queue_name)

    rabbit = settings.broker == "rabbitmq"
    # On classic RabbitMQ, .XQ is declared alike by both, so its messages are fairway's where they are.
    dead_moved = dead_moved_by_migrate(settings, queue_name, len(fill.dead))
    assert (report.ready, report.delayed, report.dead) == (len(fill.ready), len(fill.delayed), dead_moved)
    assert report.redeclared == redeclared_by_migrate(settings, queue_name)
    # On RabbitMQ fairway's .DQ and .XQ have the stock names: what is left there is fairway's now.
    left = (
        {"ready": 0, "delayed": len(fill.delayed), "dead": len(fill.dead)}
        if rabbit
        else {"ready": 0, "delayed": 0, "dead": 0}
    )
    assert stock_counts(settings, queue_name) == left
    assert fairway_dead_count(broker, settings, queue_name) == len(fill.dead)
    assert broker.ready_by_level(queue_name) == {URGENT: len(fill.urgent), Priority.NORMAL: 400 - len(fill.urgent)}

    record.send(-1, note_of(-1))  # the 406 is gone
    start_worker(threads=4)
    expected = [*fill.runnable, -1]
    wait_for(lambda: len(runs) == len(expected), timeout=60)
    broker.join(queue_name, timeout=30_000)
    assert sorted(runs) == sorted(expected)
    assert set(runs.values()) == {1}
    assert all(notes[i] == note_of(i) for i in expected)


def test_dry_run_counts_and_moves_nothing(broker: Broker, settings: Settings, queue_name: str) -> None:
    fill = fill_stock_queue(settings, queue_name, ready=20, delayed=5, dead=3)
    before = stock_counts(settings, queue_name)

    report = run_migrate(broker, settings, queue_name, dry_run=True)

    rabbit = settings.broker == "rabbitmq"
    assert (report.ready, report.delayed, report.dead) == (20, 5, dead_moved_by_migrate(settings, queue_name, 3))
    assert report.redeclared == redeclared_by_migrate(settings, queue_name)
    assert stock_counts(settings, queue_name) == before == {"ready": 20, "delayed": 5, "dead": len(fill.dead)}
    if rabbit:
        assert amqp_count(settings, level_queue(queue_name, Priority.NORMAL, 0)) is None  # nothing declared either


def test_a_second_run_moves_nothing(broker: Broker, settings: Settings, queue_name: str) -> None:
    fill_stock_queue(settings, queue_name, ready=10, delayed=2, dead=1)
    first = run_migrate(broker, settings, queue_name)

    second = run_migrate(broker, settings, queue_name)

    assert first.ready == 10
    assert second == Migrated(queue=queue_name)


def test_an_unknown_queue_is_refused_by_name(broker: Broker, settings: Settings) -> None:
    with pytest.raises(UnknownQueue, match="'no_such_queue_x1' is unknown"):
        migrate(broker, ["no_such_queue_x1"], stock_namespace=stock_namespace(settings))


@pytest.mark.parametrize("broker_kind", ["redis"])
def test_messages_stock_producers_send_while_migrating_are_kept(
    broker: Broker, settings: Settings, queue_name: str
) -> None:
    """On Redis (stock keys are never deleted, so stock producers may go on): each send lands in
    the stock keys or in fairway's layout, and the next run moves what the first one missed. On
    RabbitMQ stock producers are stopped first: once migrated, their declare is refused (406)."""
    fill_stock_queue(settings, queue_name, ready=200, delayed=0, dead=0)
    producer = stock_broker(settings)
    record = dramatiq.actor(queue_name=queue_name, actor_name="record", broker=producer)(note_of)
    stop = threading.Event()
    sent: list[int] = []

    def keep_sending() -> None:
        while not stop.is_set() and len(sent) < 300:
            record.send(len(sent))
            sent.append(len(sent))

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        moved = run_migrate(broker, settings, queue_name).ready
    finally:
        stop.set()
        sender.join()
        producer.close()
    moved += run_migrate(broker, settings, queue_name).ready
    assert sent
    assert moved == 200 + len(sent)
    assert sum(broker.ready_by_level(queue_name).values()) == 200 + len(sent)


@pytest.mark.parametrize("broker_kind", ["rabbitmq"])
def test_a_run_interrupted_after_parking_the_delay_queue_is_finished_by_the_next(
    broker: Broker, settings: Settings, queue_name: str
) -> None:
    """The state a crash leaves between deleting the stock ``.DQ`` and refilling it: its messages
    only in the parking queue. The next run declares ``.DQ`` with fairway's arguments and refills it."""
    fill_stock_queue(settings, queue_name, ready=3, delayed=4, dead=0, delay_ms=60_000)
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    channel = connection.channel()
    parking = dq_name(queue_name) + PARKING_SUFFIX
    channel.queue_declare(parking, durable=True)
    while True:
        method, properties, body = channel.basic_get(dq_name(queue_name))
        if method is None:
            break
        channel.basic_publish("", parking, body, properties)
        channel.basic_ack(method.delivery_tag)
    channel.queue_delete(dq_name(queue_name))
    connection.close()

    report = run_migrate(broker, settings, queue_name)

    assert (report.ready, report.delayed) == (3, 4)
    assert amqp_count(settings, parking) is None
    assert amqp_count(settings, dq_name(queue_name)) == 4
    assert run_migrate(broker, settings, queue_name) == Migrated(queue=queue_name)


@pytest.mark.parametrize("broker_kind", ["redis"])
def test_messages_a_dead_stock_worker_held_are_moved_too(broker: Broker, settings: Settings, queue_name: str) -> None:
    """A stock worker that fetched messages and died: its ack set is moved once its heartbeat is stale."""
    fill_stock_queue(settings, queue_name, ready=10, delayed=0, dead=0)
    stock = stock_broker(settings)
    assert isinstance(stock, RedisBroker)
    dramatiq.actor(queue_name=queue_name, actor_name="record", broker=stock)(note_of)
    consumer = stock.consume(queue_name, prefetch=4)
    held = [next(consumer) for _ in range(4)]
    assert all(held)
    stock.client.zadd(stock_heartbeats_key(stock_namespace(settings)), {stock.broker_id: 0})

    report = run_migrate(broker, settings, queue_name)

    assert report.ready == 10
    assert sum(broker.ready_by_level(queue_name).values()) == 10
    stock.close()


@pytest.mark.parametrize("broker_kind", ["rabbitmq"])
def test_messages_on_lanes_of_an_older_larger_lane_count_are_moved(
    broker: Broker, settings: Settings, queue_name: str
) -> None:
    assert isinstance(broker, FairRabbitmqBroker)
    older = FairRabbitmqBroker(
        url=settings.rabbitmq_url, confirm_delivery=True, max_priority=RABBITMQ_MAX_PRIORITY, settings=settings, lanes=8
    )
    record = dramatiq.actor(queue_name=queue_name, actor_name="record", broker=older)(note_of)
    tenants = [f"t{i}" for i in range(40)]
    for tenant in tenants:
        record.send_with_options(args=(0,), tenant=tenant)
    beyond = sum(lane_of(tenant, 8) >= broker.lanes for tenant in tenants)
    assert beyond

    report = run_migrate(broker, settings, queue_name)

    assert report.ready == beyond
    assert broker.ready_by_level(queue_name) == {Priority.NORMAL: len(tenants)}
    assert all(amqp_count(settings, level_queue(queue_name, level, 7)) is None for level in Priority)
    assert report.redeclared == []
    assert run_migrate(broker, settings, queue_name) == Migrated(queue=queue_name)
    for lane in range(8):
        for level in Priority:
            older.channel.queue_delete(level_queue(queue_name, level, lane))
    older.close()


@pytest.mark.parametrize("broker_kind", ["rabbitmq"])
@pytest.mark.parametrize("known_quorum", [True, False])
def test_a_quorum_queue_is_deleted_only_when_empty(
    broker: Broker, settings: Settings, queue_name: str, known_quorum: bool
) -> None:
    """Quorum queues refuse ``queue.delete`` with ``if_empty`` (540, closing the connection): one
    known to be quorum is counted first; one that is not known is tried with ``if_empty``, and the
    540 falls back to the count. Either way a queue holding a message stays, and the broker's
    connection serves on."""
    assert isinstance(broker, FairRabbitmqBroker)
    full, empty = f"{queue_name}.quorum.full", f"{queue_name}.quorum.empty"
    channel = broker.connection.channel()
    for name in (full, empty):
        channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
    channel.confirm_delivery()
    channel.basic_publish("", full, b"kept")
    channel.close()

    assert _delete_if_empty(broker, full, quorum=known_quorum) is False
    assert _delete_if_empty(broker, empty, quorum=known_quorum) is True

    assert amqp_count(settings, full) == 1
    assert amqp_count(settings, empty) is None
    broker.channel.queue_delete(full)
