"""A batch published to RabbitMQ under streamed publisher confirms (``enqueue_many``, docs/design.md).

pika's ``BlockingChannel`` in confirm mode waits for the server's confirm inside every
``basic_publish``: one round trip per message. Here confirm mode is selected on the pika channel
underneath it, with our own callbacks, so ``basic_publish`` only writes: a window of up to
``WINDOW`` messages goes out, then the connection is driven until each one is confirmed. A nacked
message is published again, and so is one returned as unroutable (its queue is gone: an own tenant
queue expired; it is declared again first), up to ``RESENDS`` times. After a lost connection the
window is published again on a new connection after each of ``PUBLISH_PAUSES``, as ``enqueue``
does, and then its messages fail: a message confirmed before the connection died may be queued
twice (at least once, as ``enqueue``).

The publisher has a connection of its own, one per broker and thread, so the broker's channel stays
in the confirm mode pika manages for ``enqueue``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import pika.frame
import pika.spec
from dramatiq import Broker, Message
from dramatiq.common import q_name
from dramatiq.errors import ConnectionClosed

from .rabbitmq import PUBLISH_PAUSES, FairRabbitmqBroker
from .rabbitmq_consumer import CONNECTION_ERRORS, ENQUEUED_HEADER

# Messages published before waiting for their confirms: RabbitMQ confirms a window of this size
# in a few milliseconds, and a lost connection resends at most this many.
WINDOW = 1000
# Times a nacked or returned message is published again before it is reported failed.
RESENDS = 3
# Seconds a window may wait for its confirms before the connection is taken for lost.
CONFIRM_TIMEOUT = 30.0
# Longest wait of one pass over the connection: confirms arrive through our callbacks, which do
# not end pika's wait, so this is how late the last one of a window can be noticed.
POLL = 0.001

Outcome = Message[Any] | Exception


@dataclass
class _Item:
    index: int
    message: Message[Any]
    target: str
    own_queue: bool
    body: bytes
    properties: pika.BasicProperties
    resends: int = 0


class ConfirmedChannel:
    """A connection whose channel confirms publishes without making ``basic_publish`` wait."""

    def __init__(self, parameters: Any) -> None:
        self.connection = pika.BlockingConnection(parameters)
        self.channel = self.connection.channel()
        # The pika Channel under the BlockingChannel: BlockingChannel.confirm_delivery would make every
        # basic_publish wait for its confirm, which is what this class is for avoiding.
        channel = self.channel._impl
        self._waiting: dict[int, int] = {}  # delivery tag -> position in the window
        self._tag = 0
        self._nacked: list[int] = []
        self._returned: set[str] = set()
        selected: list[Any] = []
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected.append)
        channel.add_on_return_callback(self._on_return)
        self._drive(lambda: bool(selected))

    def publish(self, window: Sequence[_Item]) -> tuple[list[_Item], list[_Item]]:
        """Publish ``window`` and wait for every confirm; the (nacked, returned) items."""
        self._nacked.clear()
        self._returned.clear()
        channel = self.channel._impl
        if not channel.is_open:
            raise pika.exceptions.ChannelWrongStateError("Channel is closed.")
        connection = channel.connection
        number, most = channel.channel_number, connection._body_max_length
        # The window's frames in one write: pika hands each frame to the socket with a send() of its
        # own (and BlockingChannel.basic_publish runs the connection after each message), which was
        # most of what a message of a batch cost.
        frames: list[bytes] = []
        for position, item in enumerate(window):
            self._tag += 1
            self._waiting[self._tag] = position
            publish = pika.spec.Basic.Publish(exchange="", routing_key=item.target, mandatory=True)
            frames.append(pika.frame.Method(number, publish).marshal())
            frames.append(pika.frame.Header(number, len(item.body), item.properties).marshal())
            frames.extend(
                pika.frame.Body(number, item.body[start : start + most]).marshal()
                for start in range(0, len(item.body), most)
            )
        connection._output_marshaled_frames([b"".join(frames)])
        self._drive(lambda: not self._waiting)
        nacked = [window[position] for position in self._nacked]
        returned = [item for item in window if item.message.message_id in self._returned]
        return nacked, returned

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    def _on_confirm(self, frame: pika.frame.Method[Any]) -> None:
        method = frame.method
        tag = method.delivery_tag
        tags = [t for t in self._waiting if t <= tag] if method.multiple else [tag]
        for confirmed in tags:
            position = self._waiting.pop(confirmed, None)
            if position is not None and isinstance(method, pika.spec.Basic.Nack):
                self._nacked.append(position)

    def _on_return(
        self, _channel: Any, _method: pika.spec.Basic.Return, properties: pika.BasicProperties, _body: bytes
    ) -> None:
        # A returned message is confirmed (acked) right after its return.
        self._returned.add(properties.message_id)

    def _drive(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise pika.exceptions.AMQPConnectionError(f"no publisher confirm within {CONFIRM_TIMEOUT:g} s")
            self.connection.process_data_events(time_limit=min(remaining, POLL))


class _Publishers(threading.local):
    channel: ConfirmedChannel | None = None


_publishers: weakref.WeakKeyDictionary[FairRabbitmqBroker, _Publishers] = weakref.WeakKeyDictionary()
_publishers_lock = threading.Lock()


def _confirmed_channel(broker: FairRabbitmqBroker) -> ConfirmedChannel:
    with _publishers_lock:
        local = _publishers.setdefault(broker, _Publishers())
    if local.channel is None or not local.channel.connection.is_open:
        local.channel = ConfirmedChannel(broker.parameters)
    return local.channel


def _drop_channel(broker: FairRabbitmqBroker) -> None:
    local = _publishers.get(broker)
    if local is not None and local.channel is not None:
        with contextlib.suppress(*CONNECTION_ERRORS):  # it is being dropped because it failed
            local.channel.close()
        local.channel = None


def publish_confirmed(
    broker: FairRabbitmqBroker,
    messages: Sequence[Message[Any]],
    check: Callable[[Broker, Message[Any]], Exception | None],
    give_back: Callable[[Broker, Message[Any]], None],
) -> list[Outcome]:
    """The outcome of each of ``messages`` (``bulk.py``: ``check`` refuses, ``give_back`` releases capacity)."""
    for name in sorted({q_name(message.queue_name) for message in messages}):
        broker.declare_queue(name, ensure=True)
    outcomes: list[Outcome] = []
    accepted: list[tuple[int, Message[Any], bytes]] = []
    for index, original in enumerate(messages):
        message = original.copy()
        refusal = check(broker, message)
        if refusal is None:
            try:
                body = message.encode()
            except (TypeError, ValueError) as not_json:  # on a broker without MessageSize
                give_back(broker, message)
                refusal = not_json
        outcomes.append(refusal or message)
        if refusal is None:
            accepted.append((index, message, body))
    routes = broker.tenant_routes
    targets = routes.destinations([message for _, message, _ in accepted])
    items = [
        _Item(index, message, target, target != routes.lane(message), body, _properties(broker, message))
        for (index, message, body), target in zip(accepted, targets, strict=True)
    ]
    for item, failure in _publish(broker, items):
        give_back(broker, item.message)
        outcomes[item.index] = failure
    for outcome in outcomes:
        if isinstance(outcome, Message):
            broker.emit_after("enqueue", outcome, None)
    return outcomes


def _publish(broker: FairRabbitmqBroker, items: list[_Item]) -> list[tuple[_Item, Exception]]:
    """Publish ``items`` until each is confirmed or failed; the failed ones with their error."""
    failed: list[tuple[_Item, Exception]] = []
    pending = list(items)
    pauses = iter(PUBLISH_PAUSES)
    while pending:
        window, rest = pending[:WINDOW], pending[WINDOW:]
        try:
            channel = _confirmed_channel(broker)
            for item in window:
                if item.own_queue:
                    broker.tenant_routes.ensure(channel.channel, item.message.queue_name, item.target)
            nacked, returned = channel.publish(window)
        except CONNECTION_ERRORS as error:
            _drop_channel(broker)
            pause = next(pauses, None)
            if pause is None:
                failed += [(item, ConnectionClosed(error)) for item in pending]
                return failed
            time.sleep(pause)
            continue
        again = {id(item): item for item in [*nacked, *returned]}
        for item in returned:
            broker.tenant_routes.forget(item.target)
        for item in again.values():
            item.resends += 1
            if item.resends > RESENDS:
                what = "returned as unroutable" if item in returned else "nacked"
                failed.append((item, ConnectionClosed(f"{what} by RabbitMQ {RESENDS + 1} times ({item.target})")))
        pending = rest + [item for item in again.values() if item.resends <= RESENDS]
    return failed


def _properties(broker: FairRabbitmqBroker, message: Message[Any]) -> pika.BasicProperties:
    # As FairRabbitmqBroker._publish, plus the message id that tells which message a return is of.
    return pika.BasicProperties(
        delivery_mode=2,
        priority=message.options.get("broker_priority"),
        headers={ENQUEUED_HEADER: broker.clock()},
        message_id=message.message_id,
    )
