"""Queues as stock Dramatiq leaves them, built with its own brokers, for the ``fairway migrate`` tests.

``fill_stock_queue`` sends through a plain ``RedisBroker`` (namespace ``<namespace>:stock``, so the
test's namespace cleanup deletes its keys) or a plain ``RabbitmqBroker`` (no ``x-max-priority``:
fairway's declare of its queue is refused with 406): first ``dead`` messages that a stock worker
fails into ``.XQ``, then ``ready`` messages (every ``PRIORITY_EVERY``-th one urgent) and ``delayed``
ones. Every message calls ``record(i, note)`` with ``note == note_of(i)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dramatiq
import pika
import redis
from dramatiq import Broker, Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, xq_name

from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.ops.migrate_rabbitmq import PARKING_SUFFIX
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import Settings

from .helpers import wait_for

REDIS_URL = "redis://127.0.0.1:6379/0"
PRIORITY_EVERY = 10
# What an urgent stock message carries: on Redis the option fairway reads, on RabbitMQ the AMQP
# priority (with fairway's five levels, 4 is HIGH).
URGENT = Priority.HIGH
URGENT_BROKER_PRIORITY = 4


def stock_namespace(settings: Settings) -> str:
    return f"{settings.namespace}:stock"


def note_of(i: int) -> str:
    return f"note-{i}"


@dataclass
class StockFill:
    ready: list[int] = field(default_factory=list)
    delayed: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    urgent: list[int] = field(default_factory=list)

    @property
    def runnable(self) -> list[int]:
        return self.ready + self.delayed


def stock_broker(settings: Settings) -> Broker:
    if settings.broker == "rabbitmq":
        return RabbitmqBroker(url=settings.rabbitmq_url)
    return RedisBroker(url=REDIS_URL, namespace=stock_namespace(settings))


def redeclared_by_migrate(settings: Settings, queue_name: str) -> list[str]:
    """The AMQP queues ``fairway migrate`` must delete and declare again for a stock queue: ``q``
    and ``q.DQ``, whose stock arguments differ from fairway's, and in quorum mode ``q.XQ`` too
    (declared alike by both in classic mode). None on Redis."""
    if settings.broker != "rabbitmq":
        return []
    names = [queue_name, dq_name(queue_name)]
    return [*names, xq_name(queue_name)] if settings.rabbitmq.queue_type == "quorum" else names


def dead_moved_by_migrate(settings: Settings, queue_name: str, dead: int) -> int:
    """Dead messages ``fairway migrate`` reports as moved: all of them on Redis and when ``q.XQ`` is
    redeclared; none on classic RabbitMQ, where stock's ``q.XQ`` already is fairway's."""
    moved = settings.broker == "redis" or xq_name(queue_name) in redeclared_by_migrate(settings, queue_name)
    return dead if moved else 0


def fill_stock_queue(
    settings: Settings, queue_name: str, *, ready: int = 400, delayed: int = 60, dead: int = 40, delay_ms: int = 2000
) -> StockFill:
    broker = stock_broker(settings)
    fill = StockFill()

    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name="record")
    def record(i: int, note: str) -> None:
        raise AssertionError("stock workers never run record")

    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name="doomed", max_retries=0)
    def doomed(i: int) -> None:
        raise ValueError(f"doomed {i}")

    try:
        if dead:
            worker = Worker(broker, worker_threads=2, worker_timeout=50)
            worker.start()
            try:
                for i in range(dead):
                    doomed.send(i)
                    fill.dead.append(i)
                wait_for(lambda: stock_counts(settings, queue_name)["dead"] == dead, timeout=30)
            finally:
                worker.stop()
        for i in range(ready):
            options = {}
            if i % PRIORITY_EVERY == 0:
                options = (
                    {"broker_priority": URGENT_BROKER_PRIORITY}
                    if settings.broker == "rabbitmq"
                    else {"priority_level": int(URGENT)}
                )
                fill.urgent.append(i)
            record.send_with_options(args=(i, note_of(i)), **options)
            fill.ready.append(i)
        for i in range(ready, ready + delayed):
            record.send_with_options(args=(i, note_of(i)), delay=delay_ms)
            fill.delayed.append(i)
    finally:
        broker.close()
    return fill


def stock_counts(settings: Settings, queue_name: str) -> dict[str, int]:
    """What the stock layout still holds: ready, delayed and dead messages."""
    names = {"ready": queue_name, "delayed": dq_name(queue_name), "dead": xq_name(queue_name)}
    if settings.broker == "rabbitmq":
        return {column: amqp_count(settings, name) or 0 for column, name in names.items()}
    client = redis.Redis.from_url(REDIS_URL)
    try:
        ns = stock_namespace(settings)
        return {
            column: int(client.zcard(f"{ns}:{name}") if column == "dead" else client.llen(f"{ns}:{name}"))
            for column, name in names.items()
        }
    finally:
        client.close()


def amqp_count(settings: Settings, name: str) -> int | None:
    """Ready messages of the AMQP queue ``name``; None when it does not exist."""
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    try:
        return int(connection.channel().queue_declare(name, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        connection.close()


def delete_stock_queues(settings: Settings, queue_name: str) -> None:
    """RabbitMQ: the queues a stock broker or a migration may have left (Redis keys go with the namespace)."""
    if settings.broker != "rabbitmq":
        return
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    channel = connection.channel()
    for name in (queue_name, dq_name(queue_name), xq_name(queue_name)):
        for queue in (name, name + PARKING_SUFFIX):
            channel.queue_delete(queue)
    connection.close()
