"""RabbitMQ with fairway's consumer: fair levels and tenants (approximated), decoding, hold-back.

Layout of a queue ``q`` (``L`` = level 1-5, ``n`` = lane 0..lanes-1, ``FAIRWAY_FAIRNESS__RABBITMQ_LANES``):

==================  =====================================================================
AMQP queue          content
==================  =====================================================================
``q.fair.L.n``      ready messages of level ``L`` whose tenant hashes to lane ``n``
                    (dead-letters to ``q.XQ``; no ``x-max-priority``)
``q``               the queue as Dramatiq declares it (``x-max-priority`` 5): nothing is
                    published there any more, but it is still consumed, so messages left
                    by an earlier version or published by hand are served (by their options)
``q.DQ``            delayed and held-back messages (unchanged; they come back through
                    ``enqueue`` and so land on their level and lane)
``q.XQ``            dead messages nacked without a dead-letter record (unchanged)
==================  =====================================================================

Dramatiq's Worker still makes one consumer per queue name; for ``q`` it gets
``_FairPickingConsumer``, which consumes every AMQP queue above on one channel with a prefetch
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

import hashlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import pika
import pika.frame
import pika.spec
import redis
from dramatiq import Message
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.rabbitmq import MAX_ENQUEUE_ATTEMPTS, RabbitmqBroker, _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.common import current_millis, dq_name, q_name, xq_name
from dramatiq.errors import ConnectionClosed, QueueJoinTimeout

from ..connections import state_store_client
from ..middlewares import dead_letters
from ..middlewares.queue_depth import passive_ready_count
from ..priority import Priority, level_of
from ..settings import Settings, load_settings
from ..store.keys import rabbitmq_queues_key
from ..tenants import tenant_of
from .delivery import HoldsAtStart, decode_or_report, held_at_start, held_copy, hold_delay
from .hooks import OverriddenHooks
from .rabbitmq_pause import PausedSubscriptions
from .rabbitmq_picker import Delivery, Picker

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS = (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)
# Seconds between two polls of the connection while the consumer has messages in hand.
POLL_INTERVAL = 0.005
# AMQP header with the time (ms) a message was published to its level queue: aging counts from it.
ENQUEUED_HEADER = "fairway-enqueued-ms"


def lane_of(tenant: str, lanes: int) -> int:
    """The lane of ``tenant``: stable across processes and restarts (not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.blake2b(tenant.encode(), digest_size=8).digest(), "big") % lanes


def level_queue(queue_name: str, level: Priority, lane: int) -> str:
    return f"{q_name(queue_name)}.fair.{int(level)}.{lane}"


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
        self._consumers: weakref.WeakSet[_FairPickingConsumer] = weakref.WeakSet()

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return _SingleQueueConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        self.declare_queue(queue_name, ensure=True)
        if queue_name != q_name(queue_name):
            return _SingleQueueConsumer(self, queue_name, prefetch, timeout)
        if self.settings.fairness.prefetch is not None:
            # Dramatiq asks for 2 x threads; keep the running ones plus the configured extra.
            prefetch = max(1, prefetch // 2 + self.settings.fairness.prefetch)
        consumer = _FairPickingConsumer(self, queue_name, prefetch, timeout)
        self._consumers.add(consumer)
        return consumer

    # Layout.

    def level_queues(self, queue_name: str) -> list[str]:
        """Every (level, lane) AMQP queue of ``queue_name``, most urgent level first."""
        return [level_queue(queue_name, level, lane) for level in Priority for lane in range(self.lanes)]

    def route(self, message: Message) -> str:
        """The AMQP queue ``message`` is published to: its level's queue on its tenant's lane."""
        if message.queue_name != q_name(message.queue_name):
            return message.queue_name
        return level_queue(
            message.queue_name, level_of(message.options), lane_of(tenant_of(message.options), self.lanes)
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
        while True:
            try:
                self.declare_queue(message.queue_name, ensure=True)
                self.emit_before("enqueue", message, None)
                self._publish(self.route(message), message)
                self.emit_after("enqueue", message, None)
                return message
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as error:
                del self.connection
                if isinstance(error, pika.exceptions.UnroutableError):
                    self.queues_pending.add(q_name(message.queue_name))
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
        except _CONNECTION_ERRORS as error:
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
        return {level: count for level, count in counts.items() if count}

    def passive_count(self, name: str) -> int:
        """Ready messages of the AMQP queue ``name``; refused (404) when it does not exist."""
        return passive_ready_count(self, name)

    def get_queue_message_counts(self, queue_name: str) -> tuple[int, int, int]:
        """(ready over the queue and all its level queues, delayed, dead), as RabbitmqBroker's."""
        ready = super()._declare_queue(queue_name).method.message_count + self._declare_level_queues(queue_name)
        delayed = self._declare_dq_queue(queue_name).method.message_count
        dead = self._declare_xq_queue(queue_name).method.message_count
        return ready, delayed, dead

    def flush(self, queue_name: str) -> None:
        super().flush(queue_name)
        for name in self.level_queues(queue_name):
            try:
                self.channel.queue_purge(name)
            except pika.exceptions.AMQPChannelError:
                del self.channel

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


class _SingleQueueConsumer(_RabbitmqConsumer):
    """Consumer of one AMQP queue (a delay queue): decodes per message, keeps dead letters out of .XQ.

    Nothing is held back here: a delayed message waits for its eta in the worker anyway, and is
    checked when it comes back through its level queue."""

    def __next__(self) -> Any:
        try:
            method, _properties, body = next(self.iterator)
            if method is None:
                return None
        except _CONNECTION_ERRORS as error:
            if getattr(error, "reply_code", None) == 404:
                self.broker.queues_pending.add(q_name(self.queue_name))
            raise ConnectionClosed(error) from None

        message = decode_or_report(self.broker, self.queue_name, body)
        if message is None:
            self._ack_tag(method.delivery_tag)
            return None
        self.known_tags.add(method.delivery_tag)
        return _RabbitmqMessage(method.redelivered, method.delivery_tag, message)

    def nack(self, message: MessageProxy) -> None:
        delay = held_at_start(message)
        if delay is not None:
            self.broker.hold_back(message._message, delay)
            self.ack(message)
            return
        # A dead-lettered message is kept as a record in the state store; a copy in .XQ would
        # only expire after 7 days and could never be removed by id when the record is requeued.
        if dead_letters.was_recorded(message):
            self.ack(message)
        else:
            super().nack(message)

    def _ack_tag(self, tag: int) -> None:
        self.connection.add_callback_threadsafe(partial(self.channel.basic_ack, tag))


class _FairPickingConsumer(_SingleQueueConsumer):
    """Consumer of a canonical queue: all its AMQP queues on one channel, picked by the §14 rule."""

    broker: FairRabbitmqBroker

    def __init__(self, broker: FairRabbitmqBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = prefetch
        self.timeout = timeout
        self.logger = logger
        self.known_tags: set[int] = set()
        self._handed_out: set[int] = set()
        # Acks and nacks of worker threads, (tag, ack?), in order: sent by this consumer's thread
        # with its next poll, so a settle costs no wake-up of the connection and no flush of its own.
        self._settles: deque[tuple[int, bool]] = deque()
        # While this consumer's thread waits: a settle wakes it once no more than this many
        # messages are out (-1: not waiting). Waiting for free slots, it wakes when a quarter of
        # them are free, to hand several out per wake-up; waiting for deliveries, at any settle.
        self._wake_at = -1
        self._refill_at = prefetch - max(1, prefetch // 4)
        self._lock = threading.Lock()
        self._polled_at = 0.0
        fairness = broker.settings.fairness
        self.picker = Picker(fairness.weights, int(fairness.max_wait * 1000), broker.clock)
        try:
            self.connection = pika.BlockingConnection(parameters=broker.parameters)
            self.channel = self.connection.channel()
            # Per AMQP queue (RabbitMQ applies it to each consumer of the channel): with ``prefetch``
            # messages of one queue running, ``prefetch`` more stay in hand, enough to cover the
            # ack -> next delivery round trip (with only one, a busy level looked empty a third of
            # the time and the next level was served instead; bench/fairness.py scenario d).
            self.channel.basic_qos(prefetch_count=2 * prefetch)
            self.subscriptions = PausedSubscriptions(
                broker,
                queue_name,
                channel=self.channel,
                names=[*broker.level_queues(queue_name), queue_name],
                on_delivery=self._on_delivery,
                picker=self.picker,
            )
            self.subscriptions.subscribe()
        except _CONNECTION_ERRORS as error:
            raise ConnectionClosed(error) from None

    def held(self) -> int:
        """Messages delivered to this consumer and not settled yet (held or handed out)."""
        return len(self.picker) + len(self._handed_out)

    def __next__(self) -> Any:
        try:
            self.subscriptions.follow()
        except _CONNECTION_ERRORS as error:
            raise ConnectionClosed(error) from None
        now = time.monotonic()
        deadline = now + self.timeout / 1000
        # First take what has arrived (and send the acks queued by worker threads) without waiting,
        # so a CRITICAL message delivered a moment ago is seen by this pick; at most every
        # POLL_INTERVAL while messages are in hand, since a poll costs more than the rest of a pick,
        # or sooner once half the prefetch waits to be acked (RabbitMQ counts those against it).
        if not self.picker or now - self._polled_at >= POLL_INTERVAL or 2 * len(self._settles) >= self.prefetch:
            self._process_events(0)
        while True:
            if len(self._handed_out) < self.prefetch and (delivery := self.picker.pick()) is not None:
                proxy = self._hand_out(delivery)
                if proxy is not None:
                    return proxy
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with self._lock:
                # Asleep only with nothing to send: a settle queued after this wakes the connection.
                if self._settles:
                    remaining = 0
                else:
                    self._wake_at = self._refill_at if len(self._handed_out) >= self.prefetch else self.prefetch
            try:
                self._process_events(remaining)
            finally:
                self._wake_at = -1

    def _process_events(self, time_limit: float) -> None:
        self._polled_at = time.monotonic()
        try:
            self._send_settles()
            self.connection.process_data_events(time_limit=time_limit)
        except _CONNECTION_ERRORS as error:
            self.picker.clear()
            if getattr(error, "reply_code", None) == 404:
                self.broker.queues_pending.add(q_name(self.queue_name))
            raise ConnectionClosed(error) from None

    def _send_settles(self) -> None:
        # One write for the batch: pika hands each frame to the socket with a send() of its own
        # (BlockingChannel's methods even flush and wait after each), and those system calls, in
        # this process and RabbitMQ's, were the larger part of what an ack cost.
        if not self._settles:
            return
        channel = self.channel._impl
        if not channel.is_open:
            raise pika.exceptions.ChannelWrongStateError("Channel is closed.")
        frames = []
        while self._settles:
            tag, ack = self._settles.popleft()
            method = pika.spec.Basic.Ack(tag) if ack else pika.spec.Basic.Nack(tag, requeue=False)
            frames.append(pika.frame.Method(channel.channel_number, method).marshal())
        channel.connection._output_marshaled_frames([b"".join(frames)])

    def _on_delivery(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        message = decode_or_report(self.broker, self.queue_name, body)
        if message is None:
            channel.basic_ack(method.delivery_tag)
            return
        try:
            level = level_of(message.options)
        except ValueError:
            level = Priority.NORMAL
        headers = properties.headers or {}
        self.picker.add(
            Delivery(
                tag=method.delivery_tag,
                redelivered=method.redelivered,
                message=message,
                level=level,
                tenant=tenant_of(message.options),
                enqueued_ms=int(headers.get(ENQUEUED_HEADER, message.message_timestamp)),
            )
        )

    def _hand_out(self, delivery: Delivery) -> MessageProxy | None:
        delay = hold_delay(self.broker, delivery.message)
        if delay:
            self.broker.hold_back(delivery.message, delay)
            try:
                self.channel.basic_ack(delivery.tag)
            except _CONNECTION_ERRORS as error:
                raise ConnectionClosed(error) from None
            return None
        with self._lock:
            self._handed_out.add(delivery.tag)
        self.known_tags.add(delivery.tag)
        return _RabbitmqMessage(delivery.redelivered, delivery.tag, delivery.message)

    def ack(self, message: MessageProxy) -> None:
        try:
            self.known_tags.remove(message._tag)
        except KeyError:
            # Delivered on an earlier channel: RabbitMQ has put it back already.
            self.logger.warning("Failed to ack message %r: not in known tags.", message.message_id)
            return
        self._settle(message._tag, ack=True)

    def _settle(self, tag: int, *, ack: bool) -> None:
        with self._lock:
            self._handed_out.discard(tag)
            self._settles.append((tag, ack))
            wake = len(self._handed_out) <= self._wake_at
            if wake:
                self._wake_at = -1
        if wake:
            try:
                self.connection.add_callback_threadsafe(_nothing)
            except _CONNECTION_ERRORS as error:
                raise ConnectionClosed(error) from None

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """RabbitMQ puts back every unacked message, held ones included, when the channel closes."""

    def close(self) -> None:
        # What this consumer held goes back to RabbitMQ with the channel: ``join`` must not wait on it.
        self.broker._consumers.discard(self)
        self.picker.clear()
        try:
            self._send_settles()
        except _CONNECTION_ERRORS:
            self.logger.debug("Connection closed before the last acks were sent; RabbitMQ redelivers those jobs.")
        super().close()


def _nothing() -> None:
    """Queued from a worker thread only to wake the consumer thread's poll."""
