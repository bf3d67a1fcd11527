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
``q``               the queue as Dramatiq declares it (``x-max-priority`` 5): nothing is
                    published there any more, but it is still consumed, so messages left
                    by an earlier version or published by hand are served (by their options)
``q.DQ``            delayed and held-back messages (unchanged; they come back through
                    ``enqueue`` and so land on their level and lane or tenant queue)
``q.XQ``            dead messages nacked without a dead-letter record (unchanged)
==================  =====================================================================

Dramatiq's Worker still makes one consumer per queue name; for ``q`` it gets
``FairPickingConsumer`` (``rabbitmq_consumer.py``), which consumes every AMQP queue above (the tenant
queues as they appear, ``rabbitmq_tenant_queues.py``) on one channel with a prefetch
of ``2 x prefetch`` per AMQP queue (so the head of every non-empty one is in hand while the
worker's threads are busy), hands out at most ``prefetch`` messages at a time and picks each one
by the scheduling rule of docs/design.md among the messages it holds (``rabbitmq_picker.py``). What holds on this broker
and what does not is in docs/fairness.md. Changing the lane count leaves messages on lanes that are
no longer consumed: drain a queue (or pause producers) before changing it.

With ``FAIRWAY_BROKER=rabbitmq``, queue names are registered in the state store
(``{namespace}:rabbitmq:queues``, a set, no TTL), so that ``fairway queues`` can list them from
another process.
"""

from __future__ import annotations

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
from dramatiq.brokers.rabbitmq import MAX_ENQUEUE_ATTEMPTS, RabbitmqBroker, _RabbitmqConsumer
from dramatiq.common import current_millis, dq_name, q_name, xq_name
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout

from ..connections import state_store_client
from ..middlewares.queue_depth import passive_ready_count
from ..priority import Priority
from ..settings import Settings, load_settings
from ..store.keys import rabbitmq_queues_key
from ..store.tenant_counts import OWN, TenantCounts
from .delivery import HoldsAtStart, held_copy
from .hooks import OverriddenHooks
from .rabbitmq_consumer import CONNECTION_ERRORS, ENQUEUED_HEADER, FairPickingConsumer, SingleQueueConsumer
from .rabbitmq_tenants import TenantRoutes, declare_tenant_queue, level_queue, tenant_queue

logger = logging.getLogger(__name__)


class FairRabbitmqBroker(HoldsAtStart, OverriddenHooks, RabbitmqBroker):
    """A RabbitmqBroker with per-level, per-lane queues and a consumer that picks fairly (docs/design.md).

    Parameters (besides RabbitmqBroker's ``url``, ``confirm_delivery``, ``max_priority``, ...):
      settings: fairness weights, max wait, prefetch, lanes and the state store; ``load_settings()``
        when omitted.
      lanes: AMQP queues per level that tenants are hashed over; ``settings.fairness.rabbitmq_lanes``
        (4) when omitted. More lanes, fewer tenants sharing a FIFO; each costs one AMQP queue and
        one consumer per level and worker process.
      clock: milliseconds since the epoch, for aging (tests set it).
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        lanes: int | None = None,
        clock: Callable[[], int] = current_millis,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.settings = settings or load_settings()
        self.lanes = lanes or self.settings.fairness.rabbitmq_lanes
        self.clock = clock
        self._state_store: redis.Redis | None = None
        self._consumers: weakref.WeakSet[FairPickingConsumer] = weakref.WeakSet()
        self._tenant_counts: TenantCounts | None = None
        self.tenant_routes = TenantRoutes(
            lambda: self.tenant_counts, self.lanes, self.settings.fairness.rabbitmq_isolate_at
        )

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return SingleQueueConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        self.declare_queue(queue_name, ensure=True)
        if queue_name != q_name(queue_name):
            return SingleQueueConsumer(self, queue_name, prefetch, timeout)
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
        """The lane of ``message``: its level's queue on its tenant's lane (``enqueue`` sends it to the
        tenant's own queue instead while the tenant is isolated, ``rabbitmq_tenants.py``)."""
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

    def _declare_queue(self, queue_name: str) -> Any:
        # Called by Dramatiq's _ensure_queue, with its retries, once per queue and process.
        declared = super()._declare_queue(queue_name)
        self._declare_level_queues(queue_name)
        self._register(queue_name)
        return declared

    def _declare_level_queues(self, queue_name: str) -> int:
        """Declare the level queues of ``queue_name``; the messages ready on them."""
        arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": xq_name(queue_name)}
        return sum(
            self.channel.queue_declare(queue=name, durable=True, arguments=arguments).method.message_count
            for name in self.level_queues(queue_name)
        )

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
        """Publish ``message`` to its level and lane (delayed messages go to ``.DQ`` as in Dramatiq)."""
        if delay is not None:
            return super().enqueue(message, delay=delay)
        attempts = 0
        # Counted once: a retry of the publish goes where the first attempt was counted.
        target: str | None = None
        while True:
            try:
                self.declare_queue(message.queue_name, ensure=True)
                self.emit_before("enqueue", message, None)
                if target is None:
                    target = self.tenant_routes.destination(message)
                if target != self.route(message):
                    self.tenant_routes.ensure(self.channel, message.queue_name, target)
                self._publish(target, message)
                self.emit_after("enqueue", message, None)
                return message
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as error:
                del self.connection
                if isinstance(error, pika.exceptions.UnroutableError):
                    self.queues_pending.add(q_name(message.queue_name))
                    if target is not None:
                        self.tenant_routes.forget(target)
                attempts += 1
                if attempts >= MAX_ENQUEUE_ATTEMPTS:
                    raise ConnectionClosed(error) from None

    def hold_back(self, message: Message, delay: int) -> None:
        """Publish a waiting copy of ``message`` on its delay queue, firing no middleware hook."""
        queue_name = q_name(message.queue_name)
        self.declare_queue(queue_name, ensure=True)
        try:
            # Named after its delay queue, as Dramatiq's own delayed messages are: the ack of this
            # copy when it moves back is then told apart from a job's ack.
            self._publish(dq_name(queue_name), held_copy(message, delay).copy(queue_name=dq_name(queue_name)))
        except CONNECTION_ERRORS as error:
            del self.connection
            raise ConnectionClosed(error) from None

    def _publish(self, routing_key: str, message: Message) -> None:
        self.channel.basic_publish(
            exchange="",
            routing_key=routing_key,
            body=message.encode(),
            properties=pika.BasicProperties(
                delivery_mode=2,
                priority=message.options.get("broker_priority"),
                headers={ENQUEUED_HEADER: self.clock()},
            ),
            mandatory=self.confirm_delivery,
        )

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
        """(ready over the queue, its level queues and its tenant queues, delayed, dead), as RabbitmqBroker's."""
        ready = super()._declare_queue(queue_name).method.message_count + self._declare_level_queues(queue_name)
        ready += sum(declare_tenant_queue(self.channel, queue_name, name) for _, name in self.tenant_queues(queue_name))
        delayed = self._declare_dq_queue(queue_name).method.message_count
        dead = self._declare_xq_queue(queue_name).method.message_count
        return ready, delayed, dead

    def flush(self, queue_name: str) -> None:
        super().flush(queue_name)
        own = [name for _, name in self.tenant_queues(queue_name)]
        for name in [*self.level_queues(queue_name), *own]:
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
