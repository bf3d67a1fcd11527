"""What every fairway consumer does with a fetched message before a worker thread sees it.

1. Decode one message at a time. A body that cannot be decoded is handed to the middleware
   that records such bodies (``record_undecodable``) and then removed from the queue by its
   broker id, so it never blocks the messages fetched with it and never loops.
2. Ask the middleware whether the message must wait (``hold``: its breaker is open, its tenant
   is at a limit, ...). A held message is put back on the delay queue with an eta and the
   original is acked, without firing any middleware hook: waiting is not failing, so no retry is
   used and Results, AgeLimit and Callbacks never see it.

The broker classes (``FairwayRabbitmqBroker``, ``FairRedisBroker``) call these functions from
their consumers and provide ``hold_back(message, delay_ms)``; the middleware involved are looked
up once per change of the broker's middleware list (``OverriddenHooks``), not per message.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Protocol, runtime_checkable

from dramatiq import Broker, Message
from dramatiq.common import current_millis
from dramatiq.errors import DecodeError

from ..errors import MessageTooLarge
from ..middlewares.message_size import max_message_bytes
from .hooks import derived_of, hooks_of

logger = logging.getLogger(__name__)

# Message option holding the time (ms) a message was first held back, so a middleware can give up
# on a message that waited too long (FAIRWAY_BREAKER__MAX_HOLD).
HELD_SINCE = "fairway_held_since"


@runtime_checkable
class HoldingMiddleware(Protocol):
    def hold(self, broker: Broker, message: Message) -> int | None:
        """Milliseconds ``message`` must wait before it may run, or None to let it run now."""


@runtime_checkable
class UndecodableRecorder(Protocol):
    def record_undecodable(self, broker: Broker, queue_name: str, body: bytes, error: Exception) -> None:
        """Keep what can be kept of a body that could not be decoded. Raise if it could not be kept."""


@runtime_checkable
class RejectionRecorder(Protocol):
    def record_rejected(self, broker: Broker, message: Message) -> None:
        """Note that ``message`` was decoded but refused before any worker saw it (too large)."""


class ArrivedTooLarge(MessageTooLarge):
    """A message over ``FAIRWAY_MAX_MESSAGE_BYTES`` reached a consumer; it is recorded, never run."""

    def __init__(self, message: Message, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes is over FAIRWAY_MAX_MESSAGE_BYTES ({limit})")
        self.message = message


def decode_or_report(broker: Broker, queue_name: str, body: bytes) -> Message | None:
    """The decoded message, or None after the body was reported as undecodable or too large."""
    try:
        message = Message.decode(body)
    except DecodeError as error:
        _report(broker, queue_name, body, error)
        return None
    limit = derived_of(broker, "max_message_bytes", max_message_bytes)
    if limit is not None and len(body) > limit:
        _report(broker, queue_name, body, ArrivedTooLarge(message, len(body), limit))
        return None
    return message


def _report(broker: Broker, queue_name: str, body: bytes, error: Exception) -> None:
    recorders = [m for m in broker.middleware if isinstance(m, UndecodableRecorder)]
    for recorder in recorders:
        recorder.record_undecodable(broker, queue_name, body, error)
    if isinstance(error, ArrivedTooLarge):
        # No processing hook ever sees this message, so its job status hears of it only here.
        for _middleware, record_rejected in hooks_of(broker, "record_rejected"):
            record_rejected(broker, error.message)
    if not recorders:
        logger.warning(
            "Dropped a message from %r (%d bytes, sha256 %s): %s",
            queue_name,
            len(body),
            hashlib.sha256(body).hexdigest(),
            error,
        )


def hold_delay(broker: Broker, message: Message) -> int | None:
    """The longest wait any middleware asks for ``message``, in milliseconds, or None."""
    delays = [delay for _middleware, hold in hooks_of(broker, "hold") if (delay := hold(broker, message))]
    return max(delays) if delays else None


def held_copy(message: Message, delay: int) -> Message:
    """The copy of ``message`` that waits ``delay`` ms on its delay queue."""
    options = {"eta": current_millis() + delay}
    if HELD_SINCE not in message.options:
        options[HELD_SINCE] = current_millis()
    return message.copy(options=options)
