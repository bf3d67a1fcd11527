"""MessageSize: a message no worker should receive is refused when it is sent (docs/design.md; docs/fairness.md).

At enqueue, after every other middleware set its options, the message is encoded once: an option
or argument that is not JSON is refused with a ``MessageRejected`` naming it and its value, and a
body over ``FAIRWAY_MAX_MESSAGE_BYTES`` raises ``MessageOverLimit`` (a ``MessageTooLarge``). A
message that arrives too large anyway (a producer without fairway, a body pushed by hand) is not
run: fairway's consumers hand it to ``DeadLetters``, which records it with reason ``too_large``
without keeping the body.

The body it encoded is kept for its thread until the next message (``encoded``): the brokers write
that body, rather than encode the message a second time.
"""

from __future__ import annotations

import json
import reprlib
import threading
from collections.abc import Iterable
from typing import Any

from dramatiq import Broker, Message, Middleware
from dramatiq.middleware import MiddlewareError

from ..errors import MessageTooLarge
from ..settings import Settings, load_settings

# The last message MessageSize encoded in this thread: (message, its option count, body).
_last = threading.local()


class MessageRejected(MiddlewareError, TypeError):
    """An option or argument of a message cannot travel as JSON."""


class MessageOverLimit(MiddlewareError, MessageTooLarge):
    """The encoded message is over ``FAIRWAY_MAX_MESSAGE_BYTES``. A ``MiddlewareError``, so that
    Dramatiq lets it reach the caller of ``send``."""


class MessageSize(Middleware):
    """Refuses at enqueue what cannot travel: non-JSON options or arguments, oversized bodies."""

    def __init__(self, *, settings: Settings | None = None) -> None:
        self.max_bytes = (settings or load_settings()).max_message_bytes

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        _last.encoded = None
        try:
            body = message.encode()
        except (TypeError, ValueError) as error:
            raise MessageRejected(_not_json(message, error)) from None
        size = len(body)
        _last.encoded = (message, len(message.options), body)
        if size > self.max_bytes:
            raise MessageOverLimit(
                f"message {message.message_id} of {message.actor_name!r} is {size} bytes, "
                f"over FAIRWAY_MAX_MESSAGE_BYTES ({self.max_bytes})"
            )


def encoded(message: Message[Any]) -> bytes:
    """``message.encode()``: the body ``MessageSize`` encoded for this very message in this thread
    when it was the last it saw, its options untouched since (it is the last hook of the stack)."""
    last = getattr(_last, "encoded", None)
    if last is not None and last[0] is message and last[1] == len(message.options):
        body: bytes = last[2]
        return body
    return message.encode()


def max_message_bytes(middleware: Iterable[Middleware]) -> int | None:
    """The size over which a broker with ``middleware`` refuses a message, or None without ``MessageSize``."""
    return next((m.max_bytes for m in middleware if isinstance(m, MessageSize)), None)


def _not_json(message: Message[Any], error: Exception) -> str:
    fields = [(f"option {name!r}", value) for name, value in message.options.items()]
    fields += [(f"argument {index}", value) for index, value in enumerate(message.args)]
    fields += [(f"argument {name!r}", value) for name, value in message.kwargs.items()]
    for field, value in fields:
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            return f"message to {message.actor_name!r}: {field} {reprlib.repr(value)} is not JSON-serialisable"
    return f"message to {message.actor_name!r} is not JSON-serialisable: {error}"
