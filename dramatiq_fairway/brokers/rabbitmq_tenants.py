"""Where ``FairRabbitmqBroker`` publishes a ready message: its tenant's lane, or the tenant's own queue.

Tenants are hashed over lanes (``lane_of``); a tenant that shares a lane with a flood would wait
behind all of it. So a tenant with ``FAIRWAY_FAIRNESS__RABBITMQ_ISOLATE_AT`` messages queued on
its lane (per level) gets an AMQP queue of its own, ``q.T<level>.<digest of the tenant>``, and
keeps it while anything is queued there (its new messages go behind them, FIFO); the next
message after it emptied goes to the lane again. The counts and the decision are one script call
in the state store (``store/tenant_counts.lua``); consumers follow the own queues from the same
counts (``rabbitmq_tenant_queues.py``). Without the state store, messages go to their lanes.
docs/design.md, "Tenant queues on RabbitMQ", has the whole picture.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from dramatiq import Message
from dramatiq.common import q_name

from ..outage import OutageWarning
from ..priority import Priority, level_of
from ..store.tenant_counts import TenantCounts
from ..tenants import tenant_of
from .rabbitmq_layout import QueueLayout, QueueRole

logger = logging.getLogger(__name__)

# An own queue nobody consumes, declares or gets from for this long is deleted by RabbitMQ, with
# what it holds: long enough to outlast a stopped worker fleet, short enough that the queues of
# tenants that stopped sending do not pile up. A consumer holds it alive while subscribed.
TENANT_QUEUE_EXPIRES_MS = 24 * 3600 * 1000
# A producer declares an own queue again (which resets its expiry) once its last declare is this old.
REDECLARE_AFTER = TENANT_QUEUE_EXPIRES_MS / 2000
# After a failed call, sends leave the state store alone this long (seconds): redis-py's retries
# make each failed call take seconds, which every send would pay while the store is down.
STORE_RETRY_AFTER = 5.0


def lane_of(tenant: str, lanes: int) -> int:
    """The lane of ``tenant``: stable across processes and restarts (not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.blake2b(tenant.encode(), digest_size=8).digest(), "big") % lanes


def level_queue(queue_name: str, level: Priority, lane: int) -> str:
    return f"{q_name(queue_name)}.fair.{int(level)}.{lane}"


def tenant_queue(queue_name: str, level: Priority, tenant: str) -> str:
    """The own queue of ``tenant`` at ``level``: a digest, since a tenant may be 128 characters of anything."""
    digest = hashlib.blake2b(tenant.encode(), digest_size=8).hexdigest()
    return f"{q_name(queue_name)}.T{int(level)}.{digest}"


def declare_tenant_queue(layout: QueueLayout, channel: Any, queue_name: str, name: str) -> int:
    """Declare the own queue ``name`` of ``queue_name`` (its arguments: ``QueueLayout``, role
    TENANT); the messages ready on it."""
    declared = layout.declare(channel, QueueRole.TENANT, name, q_name(queue_name), expires_ms=TENANT_QUEUE_EXPIRES_MS)
    return int(declared.method.message_count)


class TenantRoutes:
    """The producer's side: counts each ready message and names the AMQP queue it goes to."""

    def __init__(
        self, counts: Callable[[], TenantCounts | None], lanes: int, isolate_at: int, layout: QueueLayout
    ) -> None:
        self.counts = counts
        self.layout = layout
        self.lanes = lanes
        self.isolate_at = isolate_at
        # Own queue -> when this process last declared it (monotonic seconds).
        self.declared: dict[str, float] = {}
        self._lock = threading.Lock()
        self._outage = OutageWarning(logger)
        self._store_down_until = float("-inf")

    def lane(self, message: Message) -> str:
        """The lane queue of ``message`` (its queue name itself for a delay or dead queue)."""
        if message.queue_name != q_name(message.queue_name):
            return message.queue_name
        level, tenant = level_of(message.options), tenant_of(message.options)
        return level_queue(message.queue_name, level, lane_of(tenant, self.lanes))

    def destination(self, message: Message) -> str:
        """Count ``message`` and name the queue it must be published to (an own queue: ``ensure`` it)."""
        lane = self.lane(message)
        counts = self.counts()
        if counts is None or lane == message.queue_name or time.monotonic() < self._store_down_until:
            return lane
        level, tenant = level_of(message.options), tenant_of(message.options)
        try:
            own = counts.route(message.queue_name, level, tenant, self.isolate_at)
        except redis.RedisError as error:
            self._store_failed(error)
            return lane
        return tenant_queue(message.queue_name, level, tenant) if own else lane

    def destinations(self, messages: Sequence[Message]) -> list[str]:
        """``destination`` of each of ``messages`` (not delayed), counted in one round trip per queue."""
        targets = [self.lane(message) for message in messages]
        counts = self.counts()
        if counts is None or time.monotonic() < self._store_down_until:
            return targets
        by_queue: dict[str, list[int]] = {}
        for index, message in enumerate(messages):
            by_queue.setdefault(message.queue_name, []).append(index)
        for queue_name, indexes in by_queue.items():
            slots = [(level_of(messages[i].options), tenant_of(messages[i].options)) for i in indexes]
            try:
                owns = counts.route_many(queue_name, slots, self.isolate_at)
            except redis.RedisError as error:
                self._store_failed(error)
                return targets
            for index, (level, tenant), own in zip(indexes, slots, owns, strict=True):
                if own:
                    targets[index] = tenant_queue(queue_name, level, tenant)
        return targets

    def _store_failed(self, error: redis.RedisError) -> None:
        self._store_down_until = time.monotonic() + STORE_RETRY_AFTER
        self._outage.warn("State store unavailable, RabbitMQ tenants are not isolated (lanes only): %s", error)

    def ensure(self, channel: Any, queue_name: str, name: str) -> None:
        """Declare ``name`` unless this process did so recently (RabbitMQ drops a message published to a
        missing queue: publisher confirms report it, and ``forget`` makes the retry declare it)."""
        with self._lock:
            declared_at = self.declared.get(name)
        if declared_at is not None and time.monotonic() - declared_at < REDECLARE_AFTER:
            return
        declare_tenant_queue(self.layout, channel, queue_name, name)
        with self._lock:
            self.declared[name] = time.monotonic()

    def forget(self, name: str) -> None:
        with self._lock:
            self.declared.pop(name, None)
