"""What fairway's consumers ask of the middleware, beyond Dramatiq's signals.

Both fairway brokers' consumers (``brokers/delivery.py``) call these hooks by name on every
middleware that defines them, before a worker thread sees a message: ``hold`` and
``hold_at_start`` (must the message wait?), ``after_hold`` (it waits, for tracing),
``record_undecodable`` (keep a body that could not be decoded or is too large) and
``record_rejected`` (a decoded message refused before any worker saw it). The contract lives
here, below the brokers, as Dramatiq's brokers import its middleware and never the reverse: a
middleware implements a hook without importing a broker module.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from dramatiq import Broker, Message, MessageProxy

from ..errors import MessageTooLarge

# Message option holding the time (ms) a message was first held back, so a middleware can give up
# on a message that waited too long (FAIRWAY_BREAKER__MAX_HOLD).
HELD_SINCE = "fairway_held_since"


@runtime_checkable
class HoldingMiddleware(Protocol):
    def hold(self, broker: Broker, message: Message) -> int | None:
        """Milliseconds ``message`` must wait before it may run, or None to let it run now."""


@runtime_checkable
class StartHoldingMiddleware(Protocol):
    def hold_at_start(self, broker: Broker, message: MessageProxy) -> int | None:
        """Milliseconds ``message``, let through by :meth:`HoldingMiddleware.hold`, must still wait,
        from what this process already knows (no round trip), or None to run it now."""


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
