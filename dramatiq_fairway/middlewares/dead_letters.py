"""DeadLetters: every message that ends failed is kept as a searchable ``DeadLetter`` (docs/design.md, "Redis keys").

Records are written in ``before_nack``, the one hook every failed message passes through,
including messages for an actor this worker does not know (those never reach the processing
hooks). They are keyed by message id, so a redelivered message is recorded once. Secrets are
redacted (:mod:`dramatiq_fairway.failures.redaction`) before anything is stored or logged: the arguments,
the options (the error texts ClassifiedRetries carries in them included), the raw body, the error
message and traceback, and the worker's log lines about the message with their tracebacks.

The reason is read from the message: an explicit ``dead_letter_reason`` option set by the
middleware that rejected it wins, then ``ClassifiedRetries``' ``failure_reason``; otherwise
``ActorNotFound`` → ``unknown_actor``, ``MessageTooLarge`` → ``too_large``, ``BreakerOpen`` on
a message that was held back → ``held_too_long``, a ``MiddlewareError`` (e.g. ``SkipMessage``
after ``fail()``) or no error at all → ``rejected``, classification ``permanent``, a
``PermanentError`` or an actor's ``throws`` → ``permanent``, anything else →
``retries_exhausted``. Classification, error type and message, traceback and retries come from
the options ``ClassifiedRetries`` sets (``classification``, ``error_type``, ``error_message``,
``traceback``, ``retries``; its ``attempt_history`` stays in the record's options), falling
back to Dramatiq's ``traceback`` option and ``retries`` count and the exception the worker
stuffed into the message.

Once a record is written (to the store, or to the local spool while the store is down), the
message is marked, and fairway's consumers ack it instead of moving it to the broker's ``.XQ``:
the record is the dead letter, so requeue and purge never delete from a queue by id. If no
record could be written anywhere, the message is nacked as usual and stays in ``.XQ``.

Bodies that cannot be decoded never become a message; fairway's consumers hand them to
``record_undecodable``, which keeps their length, SHA-256 and first 256 bytes (base64). A body
whose sealed payload could not be opened (``Encryption``) is recorded as ``undecryptable`` with its
readable fields and the envelope it arrived with.

With ``FAIRWAY_ENCRYPTION__KEYS`` set, a record's args and kwargs are sealed after redaction
(``store/dead_letter_sealing.py``), so the store holds only ciphertext.

Works on the stock brokers too; there a recorded message also lands in ``.XQ`` (for Redis,
``DeadLetterStore.requeue`` removes that copy).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, get_args

from dramatiq import Broker, Message, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import MiddlewareError

from ..encryption.keyring import ENVELOPE, Keyring
from ..errors import BreakerOpen, MessageTooLarge, PermanentError
from ..failures.classify import qualified_name
from ..failures.fingerprint import fingerprint
from ..failures.redaction import Redacted, Redactor
from ..priority import Priority
from ..settings import Settings, load_settings
from ..store.dead_letter_sealing import seal_record
from ..store.dead_letters import DeadLetter, DeadLetterStore, Reason
from ..tenants import tenant_of
from .consumer_hooks import HELD_SINCE, ArrivedTooLarge
from .encryption import undecryptable_message

logger = logging.getLogger(__name__)

REASON_OPTION = "dead_letter_reason"
_CLASSIFIED_REASON = "failure_reason"
_REASONS: tuple[str, ...] = get_args(Reason)
_RECORDED = "_fairway_dead_lettered"
_HEAD_BYTES = 256
_MAX_ERROR_MESSAGE = 2000


class DeadLetters(Middleware):
    """Records every failed message as a ``DeadLetter`` in the state store."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: DeadLetterStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or load_settings()
        self.redactor = Redactor.from_settings(self.settings)
        self.keyring = Keyring.from_settings(self.settings)
        self.clock = clock
        if store is not None:
            self.store = store

    @cached_property
    def store(self) -> DeadLetterStore:
        # Built on first use so that constructing the stack opens no connection.
        return DeadLetterStore(self.settings)

    def after_declare_actor(self, broker: Broker, actor: Any) -> None:
        del broker
        # An actor logs its arguments at DEBUG ("Received args=(...) kwargs={...}").
        if not any(isinstance(f, ActorLogRedaction) for f in actor.logger.filters):
            actor.logger.addFilter(ActorLogRedaction(self.redactor, actor.fn))

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        del worker
        for actor_name in broker.get_declared_actors():
            self.after_declare_actor(broker, broker.get_actor(actor_name))
        # Dramatiq's worker logs a failed message with its arguments ("Failed to process message
        # login('ann', 'hunter2')"). The logger is process-wide: the newest broker's filter wins.
        worker_log = logging.getLogger("dramatiq.worker.WorkerThread")
        for stale in [f for f in worker_log.filters if isinstance(f, MessageLogRedaction)]:
            worker_log.removeFilter(stale)
        worker_log.addFilter(MessageLogRedaction(self.redactor, broker))

    def before_nack(self, broker: Broker, message: MessageProxy) -> None:
        if was_recorded(message):
            return
        record = self.build_record(broker, message)
        try:
            self.store.add(record)
        except OSError as error:
            logger.error(
                "Dead letter %s of %r could not be recorded (state store down, spool failed: %s); "
                "it stays in the broker's dead-letter queue.",
                record.id,
                record.queue,
                error.strerror or type(error).__name__,
            )
            return
        setattr(message, _RECORDED, True)

    def record_undecodable(self, broker: Broker, queue_name: str, body: bytes, error: Exception) -> None:
        """Record a body that could not be decoded or arrived too large (kept as its length, digest
        and head, never whole); raises ``OSError`` if it could not be kept anywhere."""
        del broker  # part of the consumer protocol; the record needs only the queue's name
        digest = hashlib.sha256(body).hexdigest()
        sealed = undecryptable_message(error)
        if sealed is not None:
            self.store.add(self._undecryptable_record(queue_name, sealed, error.__cause__ or error))
            return
        message = error.message if isinstance(error, ArrivedTooLarge) else None
        # DecodeError's own text quotes the whole body; its cause says what was wrong without it.
        cause = error if message else getattr(error, "error", None) or error.__cause__
        error_type = qualified_name(type(error))
        error_message = str(cause)[:_MAX_ERROR_MESSAGE] if cause else ""
        record = DeadLetter(
            id=message.message_id if message else f"undecodable-{digest[:32]}",
            queue=q_name(queue_name),
            actor=message.actor_name if message else None,
            error_type=error_type,
            error_message=error_message,
            fingerprint=fingerprint(error_type, error_message, None),
            failed_at=self._now(),
            reason="too_large" if message else "undecodable",
            raw={
                "length": len(body),
                "sha256": digest,
                "head_base64": base64.b64encode(body[:_HEAD_BYTES]).decode(),
            },
        )
        self.store.add(record)

    def _undecryptable_record(self, queue_name: str, message: Message, cause: BaseException) -> DeadLetter:
        error_type = qualified_name(type(cause))
        error_message = str(cause)[:_MAX_ERROR_MESSAGE]
        # The envelope is ciphertext: redaction patterns must not rewrite it into something unopenable.
        envelope = {ENVELOPE: message.options[ENVELOPE]}
        readable = {key: value for key, value in message.options.items() if key != ENVELOPE}
        options = {**self.redactor.redact_message([], {}, readable, None).options, **envelope}
        return DeadLetter(
            id=message.message_id,
            queue=q_name(queue_name),
            actor=message.actor_name,
            options=options,
            tenant=tenant_of(options),
            priority_level=_priority_name(options.get("priority_level")),
            error_type=error_type,
            error_message=error_message,
            fingerprint=fingerprint(error_type, error_message, None),
            enqueued_at=datetime.fromtimestamp(message.message_timestamp / 1000, UTC),
            failed_at=self._now(),
            reason="undecryptable",
            raw={**message.asdict(), "options": options},
        )

    def build_record(self, broker: Broker, message: MessageProxy) -> DeadLetter:
        """The redacted ``DeadLetter`` for a failed message."""
        options = dict(message.options)
        exception = message._exception
        try:
            actor = broker.get_actor(message.actor_name)
        except ActorNotFound:
            actor = None
        # The traceback gets its own field; the copy in the options would be stored twice more.
        trace = options.pop("traceback", None) or _format(exception)
        redacted = self.redactor.redact_message(
            list(message.args), dict(message.kwargs), options, actor.fn if actor else None
        )
        error_type = options.get("error_type") or (qualified_name(type(exception)) if exception else None)
        error_message = options.get("error_message")
        if error_message is None and exception is not None:
            error_message = str(exception)
        error_message = redacted.scrub(error_message[:_MAX_ERROR_MESSAGE] if error_message else error_message)
        trace = redacted.scrub(trace)
        classification = options.get("classification")
        reason = _reason(options, exception, classification, actor.options.get("throws") if actor else None)
        raw = message.asdict()
        raw.update(args=redacted.args, kwargs=redacted.kwargs, options=redacted.options)
        record = DeadLetter(
            id=message.message_id,
            queue=q_name(message.queue_name),
            actor=message.actor_name,
            args=redacted.args,
            kwargs=redacted.kwargs,
            options=redacted.options,
            tenant=tenant_of(options),
            priority_level=_priority_name(options.get("priority_level")),
            error_type=error_type,
            error_message=error_message,
            traceback=trace,
            classification=classification,
            retries=_retries(options, reason),
            fingerprint=fingerprint(error_type, error_message, trace),
            enqueued_at=datetime.fromtimestamp(message.message_timestamp / 1000, UTC),
            failed_at=self._now(),
            reason=reason,
            raw=raw,
            redacted_fields=redacted.fields,
        )
        return seal_record(record, self.keyring)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)


class MessageLogRedaction(logging.Filter):
    """Renders messages passed as log arguments with their secrets redacted, and scrubs the line's
    other arguments and its traceback (the failed job's exception quotes what it was given)."""

    def __init__(self, redactor: Redactor, broker: Broker) -> None:
        super().__init__()
        self.redactor = redactor
        self.broker = broker

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.args, tuple):
            return True
        message = next((arg for arg in record.args if isinstance(arg, Message | MessageProxy)), None)
        if message is None:
            return True
        redacted = self._redact(message)
        record.args = tuple(
            _render(arg, redacted) if isinstance(arg, Message | MessageProxy) else _scrubbed(arg, redacted)
            for arg in record.args
        )
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters print exc_text when there is no exc_info; the exception object itself
            # would be formatted again, secrets and all, by any handler that reads it.
            record.exc_text = redacted.scrub_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        return True

    def _redact(self, message: Message | MessageProxy) -> Redacted:
        try:
            fn = self.broker.get_actor(message.actor_name).fn
        except ActorNotFound:
            fn = None
        return self.redactor.redact_message(list(message.args), dict(message.kwargs), {}, fn)


def _render(message: Message | MessageProxy, redacted: Redacted) -> str:
    params = [repr(arg) for arg in redacted.args] + [f"{k}={v!r}" for k, v in redacted.kwargs.items()]
    return f"{message.actor_name}({', '.join(params)})"


def _scrubbed(arg: Any, redacted: Redacted) -> Any:
    if isinstance(arg, int | float | bool) or arg is None:
        return arg
    text = str(arg)
    clean = redacted.scrub_text(text)
    return arg if clean == text else clean


class ActorLogRedaction(logging.Filter):
    """Redacts the ``(args, kwargs)`` an actor logs when it is called."""

    def __init__(self, redactor: Redactor, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.redactor = redactor
        self.fn = fn

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 2:
            args, kwargs = record.args
            if isinstance(args, tuple) and isinstance(kwargs, dict):
                redacted = self.redactor.redact_message(args, kwargs, {}, self.fn)
                record.args = (tuple(redacted.args), redacted.kwargs)
        return True


def was_recorded(message: MessageProxy) -> bool:
    """Whether ``DeadLetters`` kept a record of ``message``, so its consumer should ack, not nack, it."""
    return bool(getattr(message, _RECORDED, False))


def _reason(options: dict[str, Any], exception: BaseException | None, classification: Any, throws: Any) -> Reason:
    for option in (REASON_OPTION, _CLASSIFIED_REASON):
        if options.get(option) in _REASONS:
            return options[option]  # type: ignore[no-any-return]
    if isinstance(exception, ActorNotFound):
        return "unknown_actor"
    if isinstance(exception, MessageTooLarge):
        return "too_large"
    if isinstance(exception, BreakerOpen) and HELD_SINCE in options:
        return "held_too_long"
    if exception is None or isinstance(exception, MiddlewareError):
        return "rejected"
    if classification == "permanent" or isinstance(exception, PermanentError):
        return "permanent"
    if throws and isinstance(exception, throws):
        return "permanent"
    return "retries_exhausted"


def _retries(options: dict[str, Any], reason: Reason) -> int:
    """Retries used before the message was dead-lettered."""
    counted = int(options.get("retries") or 0)
    if _CLASSIFIED_REASON in options:
        return counted
    # Dramatiq's own Retries counts the final failed run too before it gives up.
    return max(counted - 1, 0) if reason == "retries_exhausted" else counted


def _priority_name(value: Any) -> str:
    if value is None:
        return Priority.NORMAL.name
    try:
        return Priority.parse(value).name
    except ValueError:
        return str(value)


def _format(exception: BaseException | None) -> str | None:
    if exception is None or exception.__traceback__ is None:
        return None
    return "".join(traceback.format_exception(exception, limit=30))
