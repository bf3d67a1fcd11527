"""The consumers of ``FairRabbitmqBroker`` (``rabbitmq.py``): one AMQP queue (a delay queue), or every
AMQP queue of a canonical queue on one channel, picked by the scheduling rule (``rabbitmq_picker.py``).

Both decode one message at a time and keep dead letters out of ``.XQ``; the fair one holds back
what a middleware says must wait (``delivery.py``) and sends the worker threads' acks in batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

import pika
import pika.frame
import pika.spec
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.common import current_millis, dq_name, q_name
from dramatiq.errors import ConnectionClosed

from ..middlewares import dead_letters
from ..priority import Priority, level_of
from ..store.tenant_counts import Slot
from ..tenants import tenant_of
from .delivery import decode_or_report, held_at_start, hold_delay
from .rabbitmq_pause import PausedSubscriptions
from .rabbitmq_picker import Delivery, Picker
from .rabbitmq_tenant_queues import TenantQueues

if TYPE_CHECKING:
    from .rabbitmq import FairRabbitmqBroker

logger = logging.getLogger(__name__)

CONNECTION_ERRORS = (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)
# Seconds between two polls of the connection while the consumer has messages in hand.
POLL_INTERVAL = 0.005
# Milliseconds a delay queue's consumer waits for a delivery before the worker looks for due messages.
DELAY_POLL_MS = 200
# AMQP header with the time (ms) a message was published to its level queue: aging counts from it.
ENQUEUED_HEADER = "fairway-enqueued-ms"


class SingleQueueConsumer(_RabbitmqConsumer):
    """Consumer of one AMQP queue (a delay queue): decodes per message, keeps dead letters out of .XQ.

    Nothing is held back here: a delayed message waits for its eta in the worker anyway, and is
    checked when it comes back through its level queue. A message not due within the broker's
    delay horizon (one that came back from a shorter park bucket, or early by clock skew) is parked
    again rather than held (``rabbitmq_delay.py``)."""

    broker: FairRabbitmqBroker
    _park_channel: Any = None

    def __next__(self) -> Any:
        try:
            method, properties, body = next(self.iterator)
            if method is None:
                return None
        except CONNECTION_ERRORS as error:
            if getattr(error, "reply_code", None) == 404:
                self.broker.queues_pending.add(q_name(self.queue_name))
            raise ConnectionClosed(error) from None

        message = decode_or_report(self.broker, self.queue_name, body)
        if message is None:
            self._ack_tag(method.delivery_tag)
            return None
        remaining = int(message.options.get("eta") or 0) - current_millis()
        if self.queue_name == dq_name(self.queue_name) and remaining > self.broker.park_queues.horizon_ms:
            self._park(method, properties, body, remaining)
            return None
        self.known_tags.add(method.delivery_tag)
        return _RabbitmqMessage(method.redelivered, method.delivery_tag, message)

    def _park(self, method: Any, properties: Any, body: bytes, remaining: int) -> None:
        """Publish the body unchanged (its eta with it) to its park queue, confirmed, then ack it here:
        a crash in between leaves a duplicate, never a loss."""
        try:
            if self._park_channel is None:
                self._park_channel = self.connection.channel()
                self._park_channel.confirm_delivery()
            route = self.broker.park_queues.route(self._park_channel, self.queue_name, remaining)
            self._park_channel.basic_publish(
                exchange="",
                routing_key=route,
                body=body,
                properties=pika.BasicProperties(delivery_mode=2, priority=properties.priority),
                mandatory=True,
            )
            self.channel.basic_ack(method.delivery_tag)
        except CONNECTION_ERRORS as error:
            self.broker.park_queues.forget()
            raise ConnectionClosed(error) from None

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


class FairPickingConsumer(SingleQueueConsumer):
    """Consumer of a canonical queue: all its AMQP queues on one channel, picked by the §14 rule."""

    def __init__(self, broker: FairRabbitmqBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = prefetch
        self.timeout = timeout
        self.logger = logger
        self.known_tags: set[int] = set()
        self._handed_out: set[int] = set()
        # Delivery tag -> where the message was counted (rabbitmq_tenant_queues.py).
        self._slots: dict[int, Slot | None] = {}
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
                on_pause=self._on_pause,
            )
            self.subscriptions.subscribe()
            self.tenants = TenantQueues(
                broker,
                queue_name,
                channel=self.channel,
                on_delivery=self._on_delivery,
                picker=self.picker,
                paused=lambda: self.subscriptions.paused,
            )
        except CONNECTION_ERRORS as error:
            raise ConnectionClosed(error) from None

    def held(self) -> int:
        """Messages delivered to this consumer and not settled yet (held, gated or handed out)."""
        return len(self.picker) + len(self._handed_out) + self.tenants.gated()

    def __next__(self) -> Any:
        try:
            self.subscriptions.follow()
            self.tenants.follow()
        except CONNECTION_ERRORS as error:
            raise ConnectionClosed(error) from None
        now = time.monotonic()
        deadline = now + self.timeout / 1000
        # First take what has arrived (and send the acks queued by worker threads) without waiting,
        # so a CRITICAL message delivered a moment ago is seen by this pick; at most every
        # POLL_INTERVAL while messages are in hand, since a poll costs more than the rest of a pick,
        # or sooner once half the prefetch waits to be acked (RabbitMQ counts those against it).
        # Not while fewer than ``_refill_at`` are out, though: the worker threads are about to run
        # dry, and a poll keeps them waiting for far longer than it takes (each system call of it
        # gives up the GIL, and winning it back from 8 busy worker threads took ~0.7 ms per poll
        # on bench/overhead.py's one_ms jobs). The poll comes once they are fed, ``_refill_at``
        # picks later at most.
        if not self.picker or (
            len(self._handed_out) >= self._refill_at
            and (now - self._polled_at >= POLL_INTERVAL or 2 * len(self._settles) >= self.prefetch)
        ):
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
                # A settle queued after this wakes the connection; those queued before are sent by
                # ``_process_events`` before it waits (one poll, not a flush and then the wait).
                self._wake_at = self._refill_at if len(self._handed_out) >= self.prefetch else self.prefetch
            try:
                self._process_events(self.tenants.wait_limit(remaining))
                self.tenants.follow()
            except CONNECTION_ERRORS as error:
                raise ConnectionClosed(error) from None
            finally:
                self._wake_at = -1

    def _process_events(self, time_limit: float) -> None:
        self._polled_at = time.monotonic()
        try:
            self._send_settles()
            self.connection.process_data_events(time_limit=time_limit)
        except CONNECTION_ERRORS as error:
            self.picker.clear()
            self.tenants.drop_gated()
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
        settled = []
        while self._settles:
            tag, ack = self._settles.popleft()
            method = pika.spec.Basic.Ack(tag) if ack else pika.spec.Basic.Nack(tag, requeue=False)
            frames.append(pika.frame.Method(channel.channel_number, method).marshal())
            settled.append(self._slots.pop(tag, None))
        _write_now(channel.connection, b"".join(frames), len(frames))
        # Counted down only once the acks are on their way (rabbitmq_tenant_queues.py says why).
        for slot in settled:
            self.tenants.settled(slot)

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
        delivery = Delivery(
            tag=method.delivery_tag,
            redelivered=method.redelivered,
            message=message,
            level=level,
            tenant=tenant_of(message.options),
            enqueued_ms=int(headers.get(ENQUEUED_HEADER, message.message_timestamp)),
        )
        slot = self.tenants.slot_of(method.routing_key, level, delivery.tenant)
        self._slots[delivery.tag] = slot
        self.tenants.admit(slot, delivery)

    def _on_pause(self, put_back: list[Delivery]) -> None:
        for delivery in put_back:
            self.tenants.settled(self._slots.pop(delivery.tag, None), requeued=True, running=False)
        self.tenants.cancel_all()

    def _hand_out(self, delivery: Delivery) -> MessageProxy | None:
        delay = hold_delay(self.broker, delivery.message)
        if delay:
            self.broker.hold_back(delivery.message, delay)
            try:
                self.channel.basic_ack(delivery.tag)
            except CONNECTION_ERRORS as error:
                raise ConnectionClosed(error) from None
            self.tenants.settled(self._slots.pop(delivery.tag, None), running=False)
            return None
        with self._lock:
            self._handed_out.add(delivery.tag)
        self.known_tags.add(delivery.tag)
        self.tenants.handed_out(self._slots.get(delivery.tag))
        return _RabbitmqMessage(delivery.redelivered, delivery.tag, delivery.message)

    def ack(self, message: MessageProxy) -> None:
        try:
            self.known_tags.remove(message._tag)
        except KeyError:
            # Delivered on an earlier channel: RabbitMQ has put it back already.
            self.logger.warning("Failed to ack message %r: not in known tags.", message.message_id)
            return
        self._settle(message._tag, ack=True)

    def _nack(self, tag: int) -> None:
        # Dead-lettered to .XQ: settled like an ack, with the acks (and counted down the same way).
        self._settle(tag, ack=False)

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
            except CONNECTION_ERRORS as error:
                raise ConnectionClosed(error) from None

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """RabbitMQ puts back every unacked message, held ones included, when the channel closes."""

    def close(self) -> None:
        # What this consumer held goes back to RabbitMQ with the channel: ``join`` must not wait on it.
        self.broker._consumers.discard(self)
        self.picker.clear()
        self.tenants.drop_gated()
        try:
            self._send_settles()
        except CONNECTION_ERRORS:
            self.logger.debug("Connection closed before the last acks were sent; RabbitMQ redelivers those jobs.")
        else:
            try:
                self.tenants.flush_settled()
            except redis.RedisError as error:
                self.logger.warning("Tenant counts not decremented at close (healed later): %s", error)
        super().close()


def _write_now(connection: Any, data: bytes, frames: int) -> None:
    """Send ``data`` (``frames`` marshalled frames) on ``connection``'s socket at once when nothing
    waits in pika's output buffer; whatever the socket does not take then goes through pika.

    pika only buffers a write and asks its poller for writability: one send became an epoll_ctl,
    an epoll_wait, the send and another epoll_ctl, each a system call that gives up the GIL and
    waits to win it back from the worker threads (bench/overhead.py, one_ms: 1,800 epoll_ctl per
    6,000 jobs, 6 with this). TLS connections, and anything pika has queued already, go the usual way.
    """
    transport: Any = getattr(connection, "_transport", None)
    sock = getattr(transport, "_sock", None)
    if sock is None or type(transport).__name__ != "_AsyncPlaintextTransport" or transport.get_write_buffer_size():
        connection._output_marshaled_frames([data])
        return
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        # Let pika meet the error on its own write and close the connection its way.
        connection._output_marshaled_frames([data])
        return
    # pika's counters, as _output_marshaled_frames keeps them (heartbeats read them).
    connection.bytes_sent += len(data)
    connection.frames_sent += frames
    if sent < len(data):
        transport.write(data[sent:])


def _nothing() -> None:
    """Queued from a worker thread only to wake the consumer thread's poll."""
