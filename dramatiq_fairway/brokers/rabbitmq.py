"""RabbitMQ with fairway's consumer: fair levels and tenants, decoding, hold-back.

Layout of a queue ``q`` (``L`` = level 1-5, ``n`` = lane 0..lanes-1, ``FAIRWAY_FAIRNESS__RABBITMQ_LANES``):

==================  =====================================================================
AMQP queue          content
==================  =====================================================================
``q.fair.L.n``      ready messages of level ``L`` whose tenant hashes to lane ``n``
                    (dead-letters to ``q.XQ``; no ``x-max-priority``)
``q.TL.<digest>``   ready messages of level ``L`` of one tenant that had
                    ``FAIRWAY_FAIRNESS__RABBITMQ_ISOLATE_AT`` queued on its lane
                    (``rabbitmq_tenants.py``: declared on demand, ``x-expires``)
``q``               the queue as Dramatiq declares it (classic: ``x-max-priority`` 5): nothing is
                    published there any more, but it is still consumed, so messages left
                    by an earlier version or published by hand are served (by their options)
``q.DQ``            delayed and held-back messages due within ``delay_horizon`` (they come
                    back through ``enqueue`` and so land on their level and lane or tenant queue)
``q.DQ.park.<ms>``  delayed messages due later, parked for ``<ms>`` (a fixed ladder), then
                    dead-lettered back into ``q.DQ`` (``rabbitmq_delay.py``): no worker holds
                    a message unacked for longer than the horizon (``consumer_timeout``)
``q.XQ``            dead messages nacked without a dead-letter record (unchanged)
==================  =====================================================================

Every one of them is declared through ``rabbitmq_layout.py``, classic or quorum queues as
``FAIRWAY_RABBITMQ__QUEUE_TYPE`` says. ``FAIRWAY_RABBITMQ_URL`` may list several nodes: pika tries
them in turn, publishes are retried on another connection after short pauses, and Dramatiq's
worker restarts a consumer whose connection died (which then connects to the next node).

Dramatiq's Worker still makes one consumer per queue name; for ``q`` it gets
``FairPickingConsumer`` (``rabbitmq_consumer.py``), which consumes every AMQP queue above (the tenant
queues as they appear, ``rabbitmq_tenant_queues.py``) on one channel with a prefetch
of ``2 x prefetch`` per AMQP queue (so the head of every non-empty one is in hand while the
worker's threads are busy), hands out at most ``prefetch`` messages at a time and picks each one
by the scheduling rule of docs/design.md among the messages it holds (``rabbitmq_picker.py``). What holds on this broker
and what does not is in docs/fairness.md. Lowering the lane count leaves messages on lanes that are
no longer consumed: ``fairway migrate`` moves them (docs/operations.md).

With ``FAIRWAY_BROKER=rabbitmq``, queue names are registered in the state store
(``{namespace}:rabbitmq:queues``, a set, no TTL), so that ``fairway queues`` can list them from
another process.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import pika
import pika.frame
import pika.spec
import redis
from dramatiq import Message
from dramatiq.broker import Consumer
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.common import current_millis, dq_name, q_name, xq_name
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout

from ..connections import state_store_client
from ..middlewares.message_size import encoded
from ..middlewares.queue_depth import passive_ready_count
from ..priority import Priority
from ..settings import Settings, load_settings
from ..store import send_writes
from ..store.keys import rabbitmq_park_queues_key, rabbitmq_queues_key
from ..store.tenant_counts import OWN, TenantCounts
from .delivery import HoldsAtStart, held_copy
from .hooks import OverriddenHooks
from .rabbitmq_consumer import (
    CONNECTION_ERRORS,
    DELAY_POLL_MS,
    ENQUEUED_HEADER,
    FairPickingConsumer,
    SingleQueueConsumer,
)
from .rabbitmq_delay import DEFAULT_DELAY_HORIZON_MS, ParkQueues
from .rabbitmq_layout import QueueLayout, QueueRole
from .rabbitmq_publish import Once, publish_confirmed_then
from .rabbitmq_tenants import TenantRoutes, declare_tenant_queue, level_queue, tenant_queue
from .rabbitmq_wire import FramesTogether

logger = logging.getLogger(__name__)
# RabbitMQ's reply to a declare whose arguments differ from the queue's.
PRECONDITION_FAILED = 406

# Seconds to wait before each further publish attempt after a lost connection: long enough for a
# cluster to fail over (a quorum queue answered again 0.26 s after its leader's node was killed, see
# docs/operations.md), short enough that a send to a cluster that is really gone fails within ~4 s.
PUBLISH_PAUSES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


class FairRabbitmqBroker(HoldsAtStart, OverriddenHooks, FramesTogether, RabbitmqBroker):
    """A RabbitmqBroker with per-level, per-lane queues and a consumer that picks fairly (docs/design.md).

    Parameters (besides RabbitmqBroker's ``url``, ``confirm_delivery``, ``max_priority``, ...):
      settings: fairness weights, max wait, prefetch, lanes and the state store; ``load_settings()``
        when omitted.
      lanes: AMQP queues per level that tenants are hashed over; ``settings.fairness.rabbitmq_lanes``
        (4) when omitted. More lanes, fewer tenants sharing a FIFO; each costs one AMQP queue and
        one consumer per level and worker process.
      clock: milliseconds since the epoch, for aging (tests set it).
      delay_horizon: milliseconds; a delayed message due later than this waits in a park queue
        rather than unacked in a worker, so it must stay well below RabbitMQ's ``consumer_timeout``
        (30 min by default). 30 s when omitted.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        lanes: int | None = None,
        clock: Callable[[], int] = current_millis,
        delay_horizon: int = DEFAULT_DELAY_HORIZON_MS,
        **options: Any,
    ) -> None:
        if delay_horizon <= 0:
            raise ValueError(f"delay_horizon must be a positive number of milliseconds, got {delay_horizon!r}")
        super().__init__(**options)
        self.settings = settings or load_settings()
        self.lanes = lanes or self.settings.fairness.rabbitmq_lanes
        self.clock = clock
        self.layout = QueueLayout(self.settings.rabbitmq.queue_type, self.max_priority)
        self.park_queues = ParkQueues(delay_horizon, self.layout)
        self._state_store: redis.Redis | None = None
        self._consumers: weakref.WeakSet[FairPickingConsumer] = weakref.WeakSet()
        self._registered_park_queues: set[str] = set()
        self._tenant_counts: TenantCounts | None = None
        self.tenant_routes = TenantRoutes(
            lambda: self.tenant_counts, self.lanes, self.settings.fairness.rabbitmq_isolate_at, self.layout
        )

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return SingleQueueConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        self.declare_queue(queue_name, ensure=True)
        if queue_name != q_name(queue_name):
            # The worker moves due messages out of the delay queue only when this returns: often
            # enough that a message runs well within a second of its eta.
            return SingleQueueConsumer(self, queue_name, prefetch, min(timeout, DELAY_POLL_MS))
        if self.settings.fairness.prefetch is not None:
            # Dramatiq asks for 2 x threads; keep the running ones plus the configured extra.
            prefetch = max(1, prefetch // 2 + self.settings.fairness.prefetch)
        consumer = FairPickingConsumer(self, queue_name, prefetch, timeout)
        self._consumers.add(consumer)
        return consumer

    # Layout.

    def level_queues(self, queue_name: str) -> list[str]:
        """Every (level, lane) AMQP queue of ``queue_name``, most urgent level first."""
        return [level_queue(queue_name, level, lane) for level in Priority for lane in range(self.lanes)]

    def route(self, message: Message) -> str:
        """The AMQP queue ``message`` is published to: its level's queue on its tenant's lane
        (``enqueue`` sends it to the tenant's own queue instead while the tenant is isolated,
        ``rabbitmq_tenants.py``); for a delayed message, its delay queue or the park queue of its
        bucket (declared when due)."""
        if message.queue_name != q_name(message.queue_name):
            remaining = int(message.options.get("eta") or 0) - current_millis()
            target = self.park_queues.route(self.channel, message.queue_name, remaining)
            if target != message.queue_name:
                self._register_park_queue(q_name(message.queue_name), target)
            return target
        return self.tenant_routes.lane(message)

    def tenant_queues(self, queue_name: str) -> list[tuple[Priority, str]]:
        """(level, own queue) of ``queue_name``'s isolated tenants, from the counts (none without the state store)."""
        if self.tenant_counts is None:
            return []
        try:
            slots = self.tenant_counts.snapshot(q_name(queue_name))
        except redis.RedisError as error:
            logger.warning("Could not list the tenant queues of %r: %s", queue_name, error)
            return []
        return sorted(
            {(slot.level, tenant_queue(queue_name, slot.level, slot.tenant)) for slot in slots if slot.kind == OWN}
        )

    def _ensure_queue(self, canonical_queue_name: str) -> None:
        try:
            super()._ensure_queue(canonical_queue_name)
        except ConnectionClosed as error:
            cause = error.message
            if isinstance(cause, pika.exceptions.ChannelClosedByBroker) and cause.reply_code == PRECONDITION_FAILED:
                raise ConnectionClosed(
                    f"{cause}: queue {canonical_queue_name!r} was declared with other arguments (by stock Dramatiq?);"
                    f" `fairway migrate {canonical_queue_name}` adopts it (docs/operations.md)"
                ) from None
            raise

    def _declare_queue(self, queue_name: str) -> Any:
        # Called by Dramatiq's _ensure_queue, with its retries, once per queue and process.
        declared = self._declare_canonical_queue(queue_name)
        self.declare_level_queues(queue_name)
        self._register(queue_name)
        return declared

    def _declare_canonical_queue(self, queue_name: str) -> Any:
        return self.layout.declare(self.channel, QueueRole.CANONICAL, queue_name, queue_name)

    def _declare_dq_queue(self, queue_name: str) -> Any:
        return self.layout.declare(self.channel, QueueRole.DELAY, dq_name(queue_name), queue_name)

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self.layout.declare(self.channel, QueueRole.DEAD, xq_name(queue_name), queue_name)

    def declare_level_queues(self, queue_name: str) -> int:
        """Declare the level queues of ``queue_name``; the messages ready on them."""
        return sum(
            self.layout.declare(self.channel, QueueRole.LEVEL, name, queue_name).method.message_count
            for name in self.level_queues(queue_name)
        )

    # fairway's declares of the three queues Dramatiq names, for `fairway migrate` (ops/migrate_rabbitmq.py),
    # which tells from a refused one (406) that stock Dramatiq declared it otherwise.

    def declare_canonical_queue(self, queue_name: str, *, with_level_queues: bool = True) -> None:
        """Declare ``queue_name`` with fairway's arguments, and its level queues unless told not to
        (a dry run only asks whether RabbitMQ accepts the declare)."""
        if with_level_queues:
            self._declare_queue(queue_name)
        else:
            self._declare_canonical_queue(queue_name)

    def declare_delay_queue(self, queue_name: str) -> None:
        self._declare_dq_queue(queue_name)

    def declare_dead_queue(self, queue_name: str) -> None:
        self._declare_xq_queue(queue_name)

    def _register(self, queue_name: str) -> None:
        # Only where fairway's settings chose RabbitMQ: then the state store is in use anyway, while
        # a broker built by hand with default settings would start the embedded Redis for this.
        if self.settings.broker != "rabbitmq":
            return
        try:
            self.state_store.sadd(self.registry_key, queue_name)
        except redis.RedisError as error:
            logger.warning("Could not register queue %r for `fairway queues`: %s", queue_name, error)

    @property
    def state_store(self) -> redis.Redis:
        """The state-store client (queue registry)."""
        if self._state_store is None:
            self._state_store = state_store_client(self.settings, socket_connect_timeout=2.0, socket_timeout=5.0)
        return self._state_store

    @property
    def tenant_counts(self) -> TenantCounts | None:
        """Queued messages per (level, tenant) (``store/tenant_counts.py``); None where, as for the
        registry, fairway's settings did not choose RabbitMQ (no tenant is isolated then)."""
        if self.settings.broker != "rabbitmq":
            return None
        if self._tenant_counts is None:
            self._tenant_counts = TenantCounts(self.state_store, self.settings.namespace)
        return self._tenant_counts

    @property
    def registry_key(self) -> str:
        return rabbitmq_queues_key(self.settings.namespace)

    def known_queues(self) -> list[str]:
        """Every queue declared on this namespace by any process (and by this one), sorted."""
        names = {name.decode() for name in self.state_store.smembers(self.registry_key)}
        return sorted(names | self.get_declared_queues())

    # Publishing.

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        """Publish ``message`` to its level and lane; a delayed one, named after ``.DQ`` with an eta
        as in Dramatiq, to ``.DQ`` or a park queue (``route``).

        On a lost connection the publish is retried on a new one (the next node of a cluster) after
        each of ``PUBLISH_PAUSES``, then ``ConnectionClosed`` is raised. With publisher confirms, a
        send that returned is on the queue (on a quorum queue: on a majority of its nodes); one
        retried after a connection died unconfirmed may be queued twice (at least once)."""
        if delay is not None:
            message = message.copy(queue_name=dq_name(message.queue_name), options={"eta": current_millis() + delay})
        pauses = iter(PUBLISH_PAUSES)
        # Counted once: a retry goes where the first attempt was counted. The hooks' state-store writes
        # ride with the count (store/send_writes.py); ``counted`` keeps them, taken back if all fail.
        target: str | None = None
        counted: send_writes.SendWrites | None = None
        while True:
            try:
                self.declare_queue(q_name(message.queue_name), ensure=True)
                with send_writes.collecting(self.state_store if self.tenant_counts else None) as writes:
                    self.emit_before("enqueue", message, delay)
                    in_flight = None
                    if target is None:
                        routed = (self.route(message), None) if delay else self.tenant_routes.dispatch(message, writes)
                        (target, in_flight), counted = routed, writes
                    # The count's replies are read while the publish's confirm travels (rabbitmq_publish.py).
                    land = Once(functools.partial(self.tenant_routes.landed, message, in_flight, writes))
                    try:
                        if delay is None and target != self.route(message):
                            self.tenant_routes.ensure(self.channel, message.queue_name, target)
                        self._publish(target, message, land)
                    finally:
                        land()
                    if not writes.sent:
                        writes.decline()  # the hooks write on their own, after the publish
                    self.emit_after("enqueue", message, delay)
                return message
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError, ConnectionClosed) as error:
                del self.connection
                self.park_queues.forget()
                if isinstance(error, pika.exceptions.UnroutableError):
                    self.queues_pending.add(q_name(message.queue_name))
                    if target is not None:
                        self.tenant_routes.forget(target)
                pause = next(pauses, None)
                if pause is None:
                    if counted is not None and counted.sent and target is not None:
                        self.tenant_routes.take_back(message, target, counted.undos)
                    raise error if isinstance(error, ConnectionClosed) else ConnectionClosed(error) from None
                logger.debug(
                    "Publish of %r lost its connection (%s); retrying in %.2f s.", message.message_id, error, pause
                )
                time.sleep(pause)

    def hold_back(self, message: Message, delay: int) -> None:
        """Publish a waiting copy of ``message`` on its delay queue, firing no middleware hook."""
        queue_name = q_name(message.queue_name)
        self.declare_queue(queue_name, ensure=True)
        try:
            # Named after its delay queue, as Dramatiq's own delayed messages are: the ack of this
            # copy when it moves back is then told apart from a job's ack.
            copy = held_copy(message, delay).copy(queue_name=dq_name(queue_name))
            self._publish(self.route(copy), copy)
        except CONNECTION_ERRORS as error:
            del self.connection
            self.park_queues.forget()
            raise ConnectionClosed(error) from None

    def _publish(self, routing_key: str, message: Message, meanwhile: Callable[[], None] = lambda: None) -> None:
        priority, headers = message.options.get("broker_priority"), {ENQUEUED_HEADER: self.clock()}
        properties = pika.BasicProperties(delivery_mode=2, priority=priority, headers=headers)
        body = encoded(message)
        publish_confirmed_then(self.channel, routing_key, body, properties, meanwhile, mandatory=self.confirm_delivery)

    # Counts, flush, join.

    def ready_by_level(self, queue_name: str) -> dict[Priority, int]:
        """Ready messages per level, without empty levels; messages on the queue Dramatiq declared
        (left from before the level queues) count as NORMAL. Passive: never creates a queue."""
        canonical = q_name(queue_name)
        counts = dict.fromkeys(Priority, 0)
        counts[Priority.NORMAL] = self.passive_count(canonical)
        for level in Priority:
            for lane in range(self.lanes):
                counts[level] += self.passive_count(level_queue(canonical, level, lane))
        for level, name in self.tenant_queues(canonical):
            try:
                counts[level] += self.passive_count(name)
            except pika.exceptions.AMQPError:
                continue  # expired: it held nothing
        return {level: count for level, count in counts.items() if count}

    def queued_by_tenant(self, queue_name: str) -> dict[tuple[Priority, str], int]:
        """Messages queued per (level, tenant), lanes and own queues together, from the state store's
        counts: from publish until settled, so those delivered and running are included."""
        queued: dict[tuple[Priority, str], int] = {}
        if self.tenant_counts is not None:
            for slot, count in self.tenant_counts.snapshot(q_name(queue_name)).items():
                queued[(slot.level, slot.tenant)] = queued.get((slot.level, slot.tenant), 0) + count
        return queued

    def passive_count(self, name: str) -> int:
        """Ready messages of the AMQP queue ``name``; refused (404) when it does not exist."""
        return passive_ready_count(self, name)

    def get_queue_message_counts(self, queue_name: str) -> tuple[int, int, int]:
        """(ready over the queue, its level queues and its tenant queues, delayed, dead), as
        RabbitmqBroker's; delayed includes what waits in the park queues (so ``join`` waits for it)."""
        ready = self._declare_canonical_queue(queue_name).method.message_count + self.declare_level_queues(queue_name)
        ready += sum(
            declare_tenant_queue(self.layout, self.channel, queue_name, name)
            for _, name in self.tenant_queues(queue_name)
        )
        delayed = self._declare_dq_queue(queue_name).method.message_count + self.parked_count(queue_name)
        dead = self._declare_xq_queue(queue_name).method.message_count
        return ready, delayed, dead

    def _register_park_queue(self, queue_name: str, park_queue: str) -> None:
        if park_queue in self._registered_park_queues:
            return
        if self.settings.broker == "rabbitmq":  # as for ``_register``
            try:
                self.state_store.sadd(rabbitmq_park_queues_key(self.settings.namespace, queue_name), park_queue)
            except redis.RedisError as error:
                logger.warning("Could not register park queue %r for `fairway queues`: %s", park_queue, error)
                return
        self._registered_park_queues.add(park_queue)

    def park_queue_names(self, queue_name: str) -> list[str]:
        """The park queues of ``queue_name`` declared by this process or registered by any."""
        names = set(self.park_queues.declared(dq_name(queue_name)))
        if self.settings.broker == "rabbitmq":
            try:
                key = rabbitmq_park_queues_key(self.settings.namespace, q_name(queue_name))
                names.update(name.decode() for name in self.state_store.smembers(key))
            except redis.RedisError as error:
                logger.warning("Could not read the park queues of %r: %s", queue_name, error)
        return sorted(names)

    def parked_count(self, queue_name: str) -> int:
        """Messages waiting in the park queues of ``queue_name`` (delayed beyond the horizon)."""
        total = 0
        for name in self.park_queue_names(queue_name):
            try:
                total += self.passive_count(name)
            except pika.exceptions.AMQPError:
                continue  # Expired or deleted: nothing waits there.
        return total

    def flush(self, queue_name: str) -> None:
        """Purge the queue, its level, tenant and park queues (the park queues any process registered)."""
        super().flush(queue_name)
        own = [name for _, name in self.tenant_queues(queue_name)]
        for name in [*self.level_queues(queue_name), *own, *self.park_queue_names(queue_name)]:
            try:
                self.channel.queue_purge(name)
            except pika.exceptions.AMQPChannelError:
                del self.channel
        if self.tenant_counts is not None:
            try:
                self.tenant_counts.clear(q_name(queue_name))
            except redis.RedisError as error:
                logger.warning("Could not reset the tenant counts of %r: %s", queue_name, error)

    def join(
        self, queue_name: str, min_successes: int = 10, idle_time: int = 100, *, timeout: int | None = None
    ) -> None:
        """Wait until ``queue_name`` and its delay queue are empty and this process's consumers of it
        hold nothing (RabbitmqBroker's join cannot see delivered, unacked messages)."""
        deadline = timeout and time.monotonic() + timeout / 1000
        successes = 0
        while successes < min_successes:
            if deadline and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            ready, delayed, _dead = self.get_queue_message_counts(queue_name)
            held = sum(c.held() for c in list(self._consumers) if c.queue_name == q_name(queue_name))
            successes = successes + 1 if ready + delayed + held == 0 else 0
            self.connection.sleep(idle_time / 1000)


# The name before #19 (one prefix, "Fair", for both fairway brokers); users may still import it.
FairwayRabbitmqBroker = FairRabbitmqBroker
