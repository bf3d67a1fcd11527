"""What every fairway consumer does with a delivered message before a worker thread sees it.

1. Decode one message at a time. A body that cannot be decoded (or whose sealed payload cannot
   be opened: ``middlewares/encryption.py``) is handed to the middleware that records such bodies
   (``record_undecodable``) and then removed from the queue by its broker id, so it never blocks
   the messages fetched with it and never loops.
2. Ask the middleware whether the message must wait (``hold``: its breaker is open, its tenant
   is at a limit, ...). A held message is put back on the delay queue with an eta and the
   original is acked, without firing any middleware hook: waiting is not failing, so no retry is
   used and Results, AgeLimit and Callbacks never see it.

3. Ask again when a worker thread takes the message (``hold_at_start``, from what the middleware
   already knows in this process, no round trip): a message prefetched while its breaker was
   closed may reach a worker thread after the breaker opened. :class:`HoldsAtStart` makes the
   broker hand such a message to its consumer's hold-back instead of the actor, with no hook fired.

The broker classes (``FairRabbitmqBroker``, ``FairRedisBroker``) call these functions from
their consumers and provide ``hold_back(message, delay_ms)``; the middleware involved are looked
up once per change of the broker's middleware list (``OverriddenHooks``), not per message.
The hooks themselves, and the names middleware share with this module, are in
``middlewares/consumer_hooks.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

from dramatiq import Broker, Message, MessageProxy
from dramatiq.common import current_millis
from dramatiq.errors import DecodeError

from ..middlewares.consumer_hooks import HELD_SINCE, ArrivedTooLarge, UndecodableRecorder
from ..middlewares.encryption import undecryptable_message
from ..middlewares.message_size import max_message_bytes
from .hooks import derived_of, hooks_of

logger = logging.getLogger(__name__)

# Attribute of a MessageProxy held back when a worker thread took it: the wait in milliseconds.
_HELD_AT_START = "_fairway_held_at_start"
# What a worker thread emits for a message after ``before_process_message``.
_OUTCOME_SIGNALS = frozenset({"process_message", "skip_message", "ack", "nack"})
# The fields of a Message, copied onto its MessageProxy when a worker thread takes it (``_settle``).
_MESSAGE_FIELDS = tuple(field.name for field in dataclasses.fields(Message))


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
    rejected = error.message if isinstance(error, ArrivedTooLarge) else undecryptable_message(error)
    if rejected is not None:
        # No processing hook ever sees this message, so its job status hears of it only here.
        for _middleware, record_rejected in hooks_of(broker, "record_rejected"):
            record_rejected(broker, rejected)
    if not recorders:
        logger.warning(
            "Dropped a message from %r (%d bytes, sha256 %s): %s",
            queue_name,
            len(body),
            hashlib.sha256(body).hexdigest(),
            error,
        )


def hold_delay(broker: Broker, message: Message) -> int | None:
    """The longest wait any middleware asks for ``message``, in milliseconds, or None.

    The consumer holds the message back for that long, so the middleware that listen for holds
    (``after_hold``) hear of it here, with the middleware that asked for the longest wait.
    """
    return _longest_hold(broker, message, "hold")


def held_copy(message: Message, delay: int) -> Message:
    """The copy of ``message`` that waits ``delay`` ms on its delay queue."""
    options = {"eta": current_millis() + delay}
    if HELD_SINCE not in message.options:
        options[HELD_SINCE] = current_millis()
    return message.copy(options=options)


def held_at_start(message: MessageProxy) -> int | None:
    """The wait of a message a worker thread was about to run and handed back, or None."""
    # Read from the instance's own attributes: ``getattr`` of an attribute a MessageProxy lacks
    # goes through its ``__getattr__`` and the wrapped Message's AttributeError, twice per signal.
    delay: int | None = getattr(message, "__dict__", _NO_ATTRIBUTES).get(_HELD_AT_START)
    return delay


_NO_ATTRIBUTES: dict[str, Any] = {}


def _settle(message: MessageProxy) -> None:
    """Copy the fields of the Message onto its proxy, as plain instance attributes.

    A MessageProxy reads each field through a Python ``__getattr__``; the hooks of a job read
    them some sixty times (bench in docs/benchmarks.md, "Worker hooks"). The Message is a frozen
    dataclass, so the copies never go stale, and they are the same objects (``options`` is the
    very dict the Message holds).
    """
    wrapped = message.__dict__.get("_message")
    if wrapped is not None:
        attributes = message.__dict__
        for name in _MESSAGE_FIELDS:
            if name not in attributes:
                attributes[name] = getattr(wrapped, name)


class HoldsAtStart:
    """A broker mixin: a message that must wait by the time a worker thread takes it goes back to
    its delay queue through the consumer (``nack`` sees :func:`held_at_start`), not to the actor.

    Dramatiq's worker thread offers no way to put a message back from ``before_process_message``
    but ``SkipMessage`` (Results would store None) or a failure. So the message is marked and
    ``fail()``-ed, which makes the worker skip the actor and hand it to ``consumer.nack``, and no
    middleware hook fires for it from then on: to every middleware, it was never taken.
    """

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        if signal in _OUTCOME_SIGNALS:
            message = args[0]
            if held_at_start(message) is not None:
                return
            if signal == "process_message":
                _settle(message)
            if signal == "process_message" and (delay := _start_hold_delay(self, message)):
                setattr(message, _HELD_AT_START, delay)
                message.fail()
                return
        super().emit_before(signal, *args, **kwargs)  # type: ignore[misc]

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        if signal in _OUTCOME_SIGNALS and held_at_start(args[0]) is not None:
            return
        super().emit_after(signal, *args, **kwargs)  # type: ignore[misc]


def _start_hold_delay(broker: Any, message: MessageProxy) -> int | None:
    return _longest_hold(broker, message, "hold_at_start")


def _longest_hold(broker: Broker, message: Message | MessageProxy, hook: str) -> int | None:
    holds = [(delay, middleware) for middleware, hold in hooks_of(broker, hook) if (delay := hold(broker, message))]
    if not holds:
        return None
    delay, holder = max(holds, key=lambda hold: int(hold[0]))
    for _middleware, after_hold in hooks_of(broker, "after_hold"):
        after_hold(broker, message, delay, type(holder).__name__)
    return int(delay)
