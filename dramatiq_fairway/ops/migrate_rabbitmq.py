"""``fairway migrate`` on RabbitMQ: stock Dramatiq's queues (or an older fairway's) into fairway's layout.

Stock Dramatiq declares ``q`` and ``q.DQ`` with its own arguments (``x-max-priority`` or none, the
dead-letter routing) and ``q.XQ`` with its dead-message TTL. Fairway declares the same three names
with its arguments (brokers/rabbitmq.py) plus the level queues ``q.fair.L.n``: RabbitMQ refuses a
declare whose arguments differ with 406 PRECONDITION_FAILED, which closes the channel.

Per queue:
1. the ready messages of ``q`` move to their level queue on their tenant's lane (a level read from
   the AMQP priority, where the body names none, is written into the body's options, because
   fairway's consumer picks by the options);
2. ``q.DQ`` and ``q.XQ``, if fairway's declare of them is refused, are emptied into a parking queue
   ``<name>.adopting``, deleted, declared with fairway's arguments and refilled from it: their
   messages (the eta of a delayed one is in its body) are fairway's as they are;
3. ``q``, if refused, is deleted once empty (``if_empty``: a message published meanwhile makes the
   delete fail, and step 1 runs again) and declared with fairway's arguments;
4. level queues of lanes beyond the broker's lane count (an older, larger
   ``FAIRWAY_FAIRNESS__RABBITMQ_LANES``), which no consumer reads, are moved as in step 1 and deleted.

With ``FAIRWAY_RABBITMQ__QUEUE_TYPE=quorum`` fairway's ``q.XQ`` is a quorum queue too, so a stock
(classic) ``q.XQ`` is refused and rehomed like ``q.DQ``; quorum queues refuse ``if_empty``, see
``_delete_if_empty`` for how they are deleted.

Every move is get (manual ack), publish with publisher confirms, then ack: a crash leaves a
message in its old place, its new place or both (then it runs twice), never in neither. A parking
queue left by a crash is emptied by the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pika
import pika.exceptions
from dramatiq import Message
from dramatiq.common import dq_name, q_name, xq_name

from ..brokers.rabbitmq import PRECONDITION_FAILED, FairRabbitmqBroker
from ..brokers.rabbitmq_consumer import ENQUEUED_HEADER
from ..brokers.rabbitmq_tenants import lane_of, level_queue
from ..errors import FairwayError
from ..priority import Priority, level_of, level_of_broker_priority
from ..tenants import DEFAULT_TENANT, tenant_of
from .controls import UnknownQueue, known_queues
from .migration_report import Migrated

PARKING_SUFFIX = ".adopting"
# Attempts at deleting a stock queue that producers keep refilling before giving up.
DELETE_ATTEMPTS = 10
NOT_FOUND = 404
NOT_IMPLEMENTED = 540

# (routing key, body, properties) a message moves to, from its (properties, body).
Target = Callable[[pika.BasicProperties, bytes], tuple[str, bytes, pika.BasicProperties]]


class QueueKeepsFilling(FairwayError):
    """Producers keep publishing to a stock queue, so it never gets empty enough to redeclare."""


def migrate_rabbitmq(broker: FairRabbitmqBroker, queue_names: Sequence[str], *, dry_run: bool) -> list[Migrated]:
    wanted = sorted({q_name(name) for name in queue_names}) if queue_names else sorted(known_queues(broker))
    for name in wanted:
        if _ready_count(broker, name) is None and _ready_count(broker, dq_name(name)) is None:
            raise UnknownQueue(name, " (RabbitMQ has no queue of that name)")
    return [_migrate_queue(broker, name, dry_run) for name in wanted]


def _migrate_queue(broker: FairRabbitmqBroker, queue: str, dry_run: bool) -> Migrated:
    if dry_run:
        return _would_move(broker, queue)
    report = Migrated(queue=queue)
    if _ready_count(broker, queue) is None:
        broker.declare_canonical_queue(queue)
    broker.declare_level_queues(queue)
    for attempt in range(DELETE_ATTEMPTS):
        report.ready += _drain(broker, queue, partial(_to_level_queue, broker, queue))
        if attempt == 0 and not _refused(broker, lambda: broker.declare_canonical_queue(queue)):
            break
        if _delete_if_empty(broker, queue):
            broker.declare_canonical_queue(queue)
            report.redeclared.append(queue)
            break
    else:
        raise QueueKeepsFilling(f"queue: {queue!r} kept receiving messages while being moved; stop its producers")
    for name in _older_lanes(broker, queue):
        report.ready += _drain(broker, name, partial(_to_level_queue, broker, queue))
        # Left if a worker with the older lane count still publishes there: the next run moves it.
        _delete_if_empty(broker, name, quorum=broker.layout.queue_type == "quorum")
    for column, name, declare in _side_queues(broker, queue):
        setattr(report, column, _rehome(broker, name, declare, report))
    return report


def _older_lanes(broker: FairRabbitmqBroker, queue: str) -> list[str]:
    """The level queues of lanes from a larger ``FAIRWAY_FAIRNESS__RABBITMQ_LANES`` than the
    broker's: no consumer reads them any more. Lanes are numbered from 0 without gaps, so the
    search stops at the first lane with no queue at any level."""
    names: list[str] = []
    lane = broker.lanes
    while found := [
        level_queue(queue, level, lane)
        for level in Priority
        if _ready_count(broker, level_queue(queue, level, lane)) is not None
    ]:
        names += found
        lane += 1
    return names


def _side_queues(broker: FairRabbitmqBroker, queue: str) -> list[tuple[str, str, Callable[[], Any]]]:
    """(report column, AMQP queue, fairway's declare of it) of the delay and the dead queue."""
    return [
        ("delayed", dq_name(queue), partial(broker.declare_delay_queue, queue)),
        ("dead", xq_name(queue), partial(broker.declare_dead_queue, queue)),
    ]


def _would_move(broker: FairRabbitmqBroker, queue: str) -> Migrated:
    """What a real run would move, moving nothing (a refused declare only closes a channel)."""
    older = sum(_ready_count(broker, name) or 0 for name in _older_lanes(broker, queue))
    report = Migrated(queue=queue, ready=(_ready_count(broker, queue) or 0) + older)
    for column, name, declare in _side_queues(broker, queue):
        parked = _ready_count(broker, name + PARKING_SUFFIX) or 0
        refused = _ready_count(broker, name) is not None and _refused(broker, declare)
        setattr(report, column, parked + ((_ready_count(broker, name) or 0) if refused else 0))
        if refused:
            report.redeclared.append(name)
    probe = partial(broker.declare_canonical_queue, queue, with_level_queues=False)
    if _ready_count(broker, queue) is not None and _refused(broker, probe):
        report.redeclared.insert(0, queue)
    return report


def _rehome(broker: FairRabbitmqBroker, name: str, declare: Callable[[], Any], report: Migrated) -> int:
    """Redeclare ``name`` with fairway's arguments through a parking queue, if its declare is refused."""
    parking = name + PARKING_SUFFIX
    moved = 0
    if _ready_count(broker, name) is not None and _refused(broker, declare):
        broker.channel.queue_declare(parking, durable=True)
        for _attempt in range(DELETE_ATTEMPTS):
            _drain(broker, name, _same_message(parking))
            if _delete_if_empty(broker, name):
                break
        else:
            raise QueueKeepsFilling(f"queue: {name!r} kept receiving messages while being moved; stop its producers")
        report.redeclared.append(name)
    if _ready_count(broker, parking) is not None:
        declare()
        moved = _drain(broker, parking, _same_message(name))
        _delete_if_empty(broker, parking)
    return moved


def _drain(broker: FairRabbitmqBroker, source: str, target: Target) -> int:
    """Move every message of ``source`` to its target: get, publish confirmed, then ack."""
    # A channel of its own with confirms on, whatever the broker's ``confirm_delivery``: closing it
    # (also on an error) gives an unacked message back to ``source``.
    channel = broker.connection.channel()
    channel.confirm_delivery()
    moved = 0
    try:
        while True:
            method, properties, body = channel.basic_get(source, auto_ack=False)
            if method is None:
                return moved
            routing_key, new_body, new_properties = target(properties, body)
            # Returns once RabbitMQ has the message; raises when it refused or could not route it.
            channel.basic_publish("", routing_key, new_body, new_properties, mandatory=True)
            channel.basic_ack(method.delivery_tag)
            moved += 1
    finally:
        if channel.is_open:
            channel.close()


def _to_level_queue(
    broker: FairRabbitmqBroker, queue: str, properties: pika.BasicProperties, body: bytes
) -> tuple[str, bytes, pika.BasicProperties]:
    try:
        message = Message.decode(body)
    except Exception:
        # Fairway's consumer dead-letters an undecodable body by id; it need not be understood here.
        return level_queue(queue, Priority.NORMAL, lane_of(DEFAULT_TENANT, broker.lanes)), body, properties
    if "priority_level" not in message.options and properties.priority is not None:
        level = level_of_broker_priority(properties.priority, broker.max_priority or Priority.BATCH)
        message = message.copy(options={"priority_level": int(level)})
        body = message.encode()
    try:
        level = level_of(message.options)
    except ValueError:
        # A bad priority_level is served as NORMAL by fairway's consumer too; it must not stop the move.
        level = Priority.NORMAL
    tenant = tenant_of(message.options)
    # A message fairway published keeps its enqueue time; a stock one's is its message timestamp.
    headers = {ENQUEUED_HEADER: message.message_timestamp, **(properties.headers or {})}
    moved = pika.BasicProperties(delivery_mode=2, priority=properties.priority, headers=headers)
    return level_queue(queue, level, lane_of(tenant, broker.lanes)), body, moved


def _same_message(routing_key: str) -> Target:
    return lambda properties, body: (routing_key, body, properties)


def _ready_count(broker: FairRabbitmqBroker, name: str) -> int | None:
    """Ready messages of ``name``; None when there is no such queue."""
    counts = _counts(broker, name)
    return None if counts is None else counts[0]


def _counts(broker: FairRabbitmqBroker, name: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of ``name``; None when there is no such queue (a passive
    declare, on a channel of its own because a 404 closes it)."""
    channel = broker.connection.channel()
    try:
        method = channel.queue_declare(name, passive=True).method
        return int(method.message_count), int(method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code == NOT_FOUND:
            return None
        raise
    finally:
        if channel.is_open:
            channel.close()


def _refused(broker: FairRabbitmqBroker, declare: Callable[[], Any]) -> bool:
    """Whether RabbitMQ refuses fairway's declare of a queue (406: declared with other arguments)."""
    try:
        declare()
    except pika.exceptions.ChannelClosedByBroker as error:
        del broker.channel
        if error.reply_code == PRECONDITION_FAILED:
            return True
        raise
    return False


def _delete_if_empty(broker: FairRabbitmqBroker, name: str, *, quorum: bool = False) -> bool:
    """Delete ``name`` if it holds no message; whether it did.

    A classic queue is deleted with ``if_empty``: RabbitMQ checks and deletes in one step. Quorum
    queues refuse that flag with 540 NOT_IMPLEMENTED, which closes the whole connection, so a queue
    known to be quorum (``quorum``), or one whose ``if_empty`` delete got the 540 (a queue some
    earlier deployment declared as quorum), is counted by a passive declare, then deleted without
    the flag. The race that leaves: a message published to it between the count and the delete is
    deleted with it. Only queues no current process publishes to get there (a stock queue whose
    producers were stopped, a lane beyond the configured count), and one held by a consumer
    (unacked messages, which the count does not see) is never deleted."""
    if not quorum:
        try:
            broker.channel.queue_delete(name, if_empty=True)
        except pika.exceptions.ChannelClosedByBroker as error:
            del broker.channel
            if error.reply_code == PRECONDITION_FAILED:
                return False
            raise
        except pika.exceptions.ConnectionClosedByBroker as error:
            if error.reply_code != NOT_IMPLEMENTED:
                raise
            del broker.connection  # the broker opens a new one on its next use
        else:
            return True
    counts = _counts(broker, name)
    if counts is None:
        return True
    if counts != (0, 0):
        return False
    broker.channel.queue_delete(name)
    return True
