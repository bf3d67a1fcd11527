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

import functools
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
from ..store.scripts import ScriptCall, ScriptsInFlight, run_scripts
from ..store.send_writes import SendWrites
from ..store.tenant_counts import NEXT_OWN, THIS_OWN, TenantCounts
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
# ``dispatch`` reuses the routing a reply gave for this long (seconds): a send then costs no state-store
# round trip before its publish. What can change meanwhile is what other processes did: their sends
# to the tenant (this process may send one more message to the lane before it follows them to the
# tenant's own queue) and the consumers (an own queue that emptied gets the tenant's messages a
# little longer, still in FIFO order). Every reply renews it, so a tenant that sends more often
# than this is routed from the counts as its previous message left them.
ROUTE_REUSE_SECONDS = 10.0
# Tenants whose routing is remembered, per broker, before the memory is cleared.
ROUTES_KEPT = 50_000


# Cached: every send asks, a digest each time (a few microseconds) for the same few tenants.
@functools.lru_cache(maxsize=65536)
def lane_of(tenant: str, lanes: int) -> int:
    """The lane of ``tenant``: stable across processes and restarts (not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.blake2b(tenant.encode(), digest_size=8).digest(), "big") % lanes


def level_queue(queue_name: str, level: Priority, lane: int) -> str:
    return f"{q_name(queue_name)}.fair.{int(level)}.{lane}"


@functools.lru_cache(maxsize=65536)
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
        # (queue, level, tenant) -> (its next message goes to its own queue, until when that holds).
        self._next: dict[tuple[str, Priority, str], tuple[bool, float]] = {}

    def lane(self, message: Message) -> str:
        """The lane queue of ``message`` (its queue name itself for a delay or dead queue)."""
        if message.queue_name != q_name(message.queue_name):
            return message.queue_name
        level, tenant = level_of(message.options), tenant_of(message.options)
        return level_queue(message.queue_name, level, lane_of(tenant, self.lanes))

    def destination(self, message: Message, writes: SendWrites | None = None) -> str:
        """Count ``message`` and name the queue it must be published to (an own queue: ``ensure`` it).

        ``writes`` (the state-store calls of this send, ``store/send_writes.py``) go in the count's
        round trip when the count goes to the store; ``writes.sent`` then says that it was counted
        and they were sent."""
        lane = self.lane(message)
        counts = self.counts()
        if counts is None or lane == message.queue_name or time.monotonic() < self._store_down_until:
            return lane
        level, tenant = level_of(message.options), tenant_of(message.options)
        try:
            reply, replies = counts.route_with(
                message.queue_name, level, tenant, self.isolate_at, writes.calls if writes is not None else []
            )
        except redis.RedisError as error:
            self._store_failed(error)
            return lane
        if writes is not None:
            writes.sent = True
            writes.report(replies)
        self._remember(message.queue_name, level, tenant, reply)
        return tenant_queue(message.queue_name, level, tenant) if reply & THIS_OWN else lane

    def dispatch(self, message: Message, writes: SendWrites) -> tuple[str, ScriptsInFlight | None]:
        """``destination`` for a send, without its round trip before the publish where it can: when
        the reply to this process's last message of the tenant (same queue and level) is less than
        ``ROUTE_REUSE_SECONDS`` old, its ``NEXT_OWN`` bit names the queue, and the count (with
        ``writes``) is sent now and its replies read by ``landed`` once the publish is done."""
        lane = self.lane(message)
        counts = self.counts()
        if counts is None or lane == message.queue_name or time.monotonic() < self._store_down_until:
            return lane, None
        level, tenant = level_of(message.options), tenant_of(message.options)
        known = self._next.get((message.queue_name, level, tenant))
        if known is None or known[1] < time.monotonic():
            return self.destination(message, writes), None
        own = known[0]
        try:
            in_flight = counts.count_sending(message.queue_name, level, tenant, self.isolate_at, writes.calls, own=own)
        except redis.RedisError as error:
            self._store_failed(error)
            return lane, None
        writes.sent = True
        return (tenant_queue(message.queue_name, level, tenant) if own else lane), in_flight

    def landed(self, message: Message, in_flight: ScriptsInFlight | None, writes: SendWrites) -> None:
        """Read the replies of ``dispatch``'s count and writes (the publish is done or failed); a
        count that failed leaves ``writes.sent`` false (nothing to take back, the hooks write alone)."""
        if in_flight is None:
            return
        try:
            reply, *replies = in_flight.replies()
            if isinstance(reply, redis.RedisError):
                raise reply
        except redis.RedisError as error:
            writes.sent = False
            self._store_failed(error)
            return
        writes.report(replies)
        self._remember(message.queue_name, level_of(message.options), tenant_of(message.options), int(reply))

    def _remember(self, queue_name: str, level: Priority, tenant: str, reply: int) -> None:
        if len(self._next) >= ROUTES_KEPT:
            self._next.clear()
        self._next[(queue_name, level, tenant)] = (bool(reply & NEXT_OWN), time.monotonic() + ROUTE_REUSE_SECONDS)

    def take_back(self, message: Message, target: str, undos: Sequence[Callable[[], ScriptCall]]) -> None:
        """``message``, counted for ``target`` by ``destination``, was never published: take back its
        count and the writes that rode with it (``undos``), in one round trip, best effort."""
        counts = self.counts()
        if counts is None:
            return
        level, tenant = level_of(message.options), tenant_of(message.options)
        calls = [counts.unroute_call(message.queue_name, level, tenant, own=target != self.lane(message))]
        try:
            run_scripts(counts.client, [], best_effort=[*calls, *(undo() for undo in undos)])
        except redis.RedisError as error:
            logger.warning("Could not take back the writes of unsent message %s: %s", message.message_id, error)

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
