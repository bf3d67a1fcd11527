"""ClassifiedRetries: Dramatiq's ``Retries``, but each failure is classified before it is retried.

It replaces ``dramatiq.middleware.Retries`` (never beside it: ``setup()`` removes the stock one).
Every failure goes through :class:`~dramatiq_fairway.failures.classify.ErrorClassifier`, whose order is:
interrupts, marker exceptions, ``dont_retry_for``/``retry_for``, registered rules, built-in type
rules, HTTP status, message patterns, the ``__cause__``, else ``unknown``. Then:

- ``transient``: retried after the actor's ``backoff`` (``full_jitter`` unless set), using a retry;
- ``rate_limited``: retried after the error's ``retry_after`` (capped by ``max_backoff``); it uses
  a retry once per hint: attempts made before the hinted time passed (because ``max_backoff``
  cut the wait short) use none;
- ``permanent``: ``message.fail()`` at once, so the message is dead-lettered after one run;
- ``unknown``: retried or failed as ``Settings.retries.unknown`` says (default ``retry``);
- ``interrupted``: ``Shutdown`` re-enqueues the message at once without using a retry;
  ``Cancelled`` ends the job (acked, not retried, not dead-lettered); ``TimeLimitExceeded`` and
  ``SoftTimeLimitExceeded`` use a retry as in Dramatiq.

Kept from Dramatiq: ``Retry(delay=...)``, ``throws`` (fail at once, no classification),
``retry_when(retries, exception)`` (when set it alone decides, over classification and
``max_retries``), ``on_retry_exhausted`` (sent on every final failure this middleware decides,
``throws`` excepted, as in Dramatiq) and a per-message ``max_retries``. Retries are counted here,
when a run fails, never on enqueue: moving a message out of the delay queue is not a retry.

Options written on the message (the dead-letter store and status tracking read them):
``retries`` (retries used), ``failures`` (failed runs), ``classification``, ``error_type``,
``error_message``, ``traceback`` (bounded), ``attempt_history`` (the last
:data:`HISTORY_LENGTH` failed runs: ``attempt``, ``classification``, ``error_type``,
``error_message``, ``at``, ``delay``), ``failure_reason`` (``permanent`` or
``retries_exhausted``, once failed), ``retry_delay`` (last delay, ms) and ``rate_limit_until``
(epoch ms). The error texts are redacted as dead-letter records are (:mod:`dramatiq_fairway.failures.redaction`:
the message's own secret arguments and whatever a value rule finds), since the options travel with
the retried message and end up in its record, its log lines and the dashboard.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from dramatiq import Broker, Message, Middleware
from dramatiq.actor import Actor
from dramatiq.broker import MessageProxy
from dramatiq.errors import Retry
from dramatiq.logging import get_logger
from dramatiq.middleware import MiddlewareError, Shutdown

from ..errors import Cancelled
from ..failures.backoff import (
    BACKOFF_STRATEGIES,
    DEFAULT_BACKOFF,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MIN_BACKOFF,
    compute_backoff,
)
from ..failures.classify import Classification, ClassificationResult, ErrorClassifier, qualified_name
from ..failures.redaction import Redactor
from ..settings import Settings, load_settings

HISTORY_LENGTH = 10
ERROR_MESSAGE_CHARS = 1000
HISTORY_MESSAGE_CHARS = 300
TRACEBACK_FRAMES = 30
TRACEBACK_CHARS = 8000
# A rate-limit hint gets up to this fraction added, so jobs told the same Retry-After do not all
# come back in the same millisecond.
HINT_JITTER = 0.1
# The options ``before_enqueue`` checks on a message.
_MESSAGE_OPTIONS = frozenset({"backoff", "retry_for", "dont_retry_for", "max_retries", "min_backoff", "max_backoff"})

RetryWhen = Callable[[int, BaseException], bool]


class RetryOptionError(MiddlewareError, ValueError):
    """A retry option (on an actor or a message) has a value ClassifiedRetries cannot use."""


class ClassifiedRetries(Middleware):
    """Retries failed messages according to what their error is; see the module docstring.

    Parameters mirror Dramatiq's ``Retries`` (``max_retries``, ``min_backoff``, ``max_backoff``,
    ``retry_when``) plus ``backoff`` (the default strategy), ``classifier`` (add rules with
    ``classifier.register(...)``) and ``rng`` (the randomness of the jittered strategies, for tests).
    """

    replaces_retries = True

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        classifier: ErrorClassifier | None = None,
        max_retries: int = 20,
        min_backoff: int | None = None,
        max_backoff: int | None = None,
        backoff: str = DEFAULT_BACKOFF,
        retry_when: RetryWhen | None = None,
        rng: random.Random | None = None,
    ) -> None:
        _check_backoff(backoff, "ClassifiedRetries(backoff=...)")
        self.logger = get_logger(__name__, type(self))
        settings = settings or load_settings()
        self.classifier = classifier or ErrorClassifier(settings)
        self.redactor = Redactor.from_settings(settings)
        self.max_retries = max_retries
        self.min_backoff = min_backoff if min_backoff is not None else DEFAULT_MIN_BACKOFF
        self.max_backoff = max_backoff if max_backoff is not None else DEFAULT_MAX_BACKOFF
        self.backoff = backoff
        self.retry_when = retry_when
        self.rng = rng or random.Random()

    @property
    def actor_options(self) -> set[str]:
        return {
            "max_retries",
            "min_backoff",
            "max_backoff",
            "backoff",
            "retry_for",
            "dont_retry_for",
            "retry_when",
            "throws",
            "on_retry_exhausted",
        }

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        if "backoff" in actor.options:
            _check_backoff(actor.options["backoff"], f"actor {actor.actor_name!r}: backoff")
        for name in ("retry_for", "dont_retry_for"):
            if name in actor.options:
                _exception_names_or_types(actor.options[name], f"actor {actor.actor_name!r}: {name}")

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int) -> None:
        options = message.options
        if _MESSAGE_OPTIONS.isdisjoint(options):  # most sends: nothing to check, no error text built
            return
        where = f"message {message.message_id}"
        if "backoff" in options:
            _check_backoff(options["backoff"], f"{where}: backoff")
        for name in ("retry_for", "dont_retry_for"):
            if name in options and any(not isinstance(item, str) for item in _as_tuple(options[name])):
                raise RetryOptionError(
                    f"{where}: {name} must be dotted exception names (strings) on a message, got {options[name]!r}"
                )
        for name in ("max_retries", "min_backoff", "max_backoff"):
            value = options.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise RetryOptionError(f"{where}: {name} must be a whole number >= 0, got {value!r}")

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None:
            return
        actor = broker.get_actor(message.actor_name)
        now = time.time()

        if isinstance(exception, Shutdown | Cancelled):
            self._record(message, exception, self.classifier.classify(exception), now, 0, actor=actor)
            if isinstance(exception, Cancelled):
                self.logger.info(
                    "Message %s of actor %s was cancelled; not retried.", message.message_id, actor.actor_name
                )
                return
            self.logger.info(
                "Re-enqueueing message %s of actor %s interrupted by shutdown; no retry used.",
                message.message_id,
                actor.actor_name,
            )
            broker.enqueue(_as_message(message))
            return

        throws = message.options.get("throws") or actor.options.get("throws")
        if throws and isinstance(exception, throws):
            verdict = ClassificationResult(Classification.PERMANENT, "throws")
            self._record(message, exception, verdict, now, None, actor=actor)
            message.options["failure_reason"] = "permanent"
            self.logger.info(
                "Message %s of actor %s raised an expected exception; not retried.",
                message.message_id,
                actor.actor_name,
            )
            message.fail()
            return

        verdict = self.classifier.classify(
            exception,
            retry_for=_as_tuple(_option(message, actor, "retry_for", ())),
            dont_retry_for=_as_tuple(_option(message, actor, "dont_retry_for", ())),
        )
        retries = int(message.options.get("retries", 0))
        max_retries = _option(message, actor, "max_retries", self.max_retries)
        uses_retry = not self._within_rate_limit_hint(message, verdict, now)

        retry_when = actor.options.get("retry_when", self.retry_when)
        if retry_when is not None:
            retry, reason = bool(retry_when(retries, exception)), "retries_exhausted"
        elif not self.classifier.should_retry(verdict):
            retry, reason = False, "permanent"
        else:
            retry = not uses_retry or max_retries is None or retries < max_retries
            reason = "retries_exhausted"

        if not retry:
            attempt = self._record(message, exception, verdict, now, None, actor=actor)
            message.options["failure_reason"] = reason
            # "(permanent)", not "(permanent, permanent)": the reason adds something only when it differs.
            why = verdict.classification if reason == verdict.classification else f"{verdict.classification}, {reason}"
            self.logger.warning(
                "Message %s of actor %s failed on attempt %d (%s); not retried.",
                message.message_id,
                actor.actor_name,
                attempt,
                why,
            )
            message.fail()
            self._send_retry_exhausted(broker, message, actor, retries, max_retries)
            return

        delay = self._delay(message, actor, exception, verdict, retries + 1)
        if uses_retry:
            message.options["retries"] = retries + 1
            # Only a counted hint moves the window: a dependency that keeps answering "wait" to
            # early attempts must still use up the retries, one per hinted interval.
            if verdict.retry_after is not None:
                message.options["rate_limit_until"] = int(now * 1000 + verdict.retry_after * 1000)
        message.options["retry_delay"] = delay
        attempt = self._record(message, exception, verdict, now, delay, actor=actor)
        self.logger.info(
            "Retrying message %s of actor %s after attempt %d (%s) in %d ms.",
            message.message_id,
            actor.actor_name,
            attempt,
            verdict.classification,
            delay,
        )
        broker.enqueue(_as_message(message), delay=delay)

    def _within_rate_limit_hint(self, message: MessageProxy, verdict: ClassificationResult, now: float) -> bool:
        """True for a rate-limited run made before the last hint expired: that hint was counted already."""
        return (
            verdict.classification is Classification.RATE_LIMITED
            and message.options.get("classification") == Classification.RATE_LIMITED
            and now * 1000 < int(message.options.get("rate_limit_until", 0))
        )

    def _delay(
        self,
        message: MessageProxy,
        actor: Actor[Any, Any],
        exception: BaseException,
        verdict: ClassificationResult,
        retry_number: int,
    ) -> int:
        max_backoff = min(int(_option(message, actor, "max_backoff", self.max_backoff)), DEFAULT_MAX_BACKOFF)
        if isinstance(exception, Retry) and exception.delay is not None:
            return int(exception.delay)
        if verdict.retry_after is not None:
            hint = verdict.retry_after * 1000
            return min(max_backoff, round(hint + self.rng.uniform(0, hint * HINT_JITTER)))
        return compute_backoff(
            _option(message, actor, "backoff", self.backoff),
            retry_number,
            min_backoff=int(_option(message, actor, "min_backoff", self.min_backoff)),
            max_backoff=max_backoff,
            previous=message.options.get("retry_delay"),
            rng=self.rng,
        )

    def _record(
        self,
        message: MessageProxy,
        exception: BaseException,
        verdict: ClassificationResult,
        now: float,
        delay: int | None,
        *,
        actor: Actor[Any, Any],
    ) -> int:
        """Write this failed run into the message's options; return its attempt number."""
        options = message.options
        attempt = int(options.get("failures", 0)) + 1
        error_type = qualified_name(type(exception))
        # Only a failure pays for redaction: the secrets it learns are the message's own arguments.
        redacted = self.redactor.redact_message(message.args, message.kwargs, options, actor.fn)
        error_message = redacted.scrub_text(_describe(exception))
        options["failures"] = attempt
        options["classification"] = str(verdict.classification)
        options["error_type"] = error_type
        options["error_message"] = error_message[:ERROR_MESSAGE_CHARS]
        options["traceback"] = redacted.scrub_text(_innermost_frames(exception))[-TRACEBACK_CHARS:]
        options["requeue_timestamp"] = int(now * 1000)
        history = [
            *options.get("attempt_history", []),
            {
                "attempt": attempt,
                "classification": str(verdict.classification),
                "error_type": error_type,
                "error_message": error_message[:HISTORY_MESSAGE_CHARS],
                "at": datetime.fromtimestamp(now, UTC).isoformat(),
                "delay": delay,
            },
        ]
        options["attempt_history"] = history[-HISTORY_LENGTH:]
        return attempt

    def _send_retry_exhausted(
        self, broker: Broker, message: MessageProxy, actor: Actor[Any, Any], retries: int, max_retries: int | None
    ) -> None:
        target_actor_name = message.options.get("on_retry_exhausted") or actor.options.get("on_retry_exhausted")
        if target_actor_name:
            broker.get_actor(target_actor_name).send(message.asdict(), {"retries": retries, "max_retries": max_retries})


def _option(message: MessageProxy, actor: Actor[Any, Any], name: str, default: Any) -> Any:
    if name in message.options:
        return message.options[name]
    return actor.options.get(name, default)


def _as_message(message: MessageProxy) -> Message[Any]:
    # A MessageProxy forwards every attribute to its Message (options included), so enqueueing it
    # sends the options written above, as Dramatiq's own Retries does.
    return cast("Message[Any]", message)


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple | set | frozenset) else (value,)


def _exception_names_or_types(value: Any, where: str) -> None:
    for item in _as_tuple(value):
        if not (isinstance(item, str) or (isinstance(item, type) and issubclass(item, BaseException))):
            raise RetryOptionError(f"{where}: expected exception classes or dotted names, got {item!r}")


def _check_backoff(value: Any, where: str) -> None:
    if value not in BACKOFF_STRATEGIES:
        raise RetryOptionError(f"{where}: must be one of {', '.join(sorted(BACKOFF_STRATEGIES))}, got {value!r}")


def _describe(exception: BaseException) -> str:
    try:
        return str(exception)
    except Exception:
        return f"<unprintable {type(exception).__name__}>"


def _innermost_frames(exception: BaseException) -> str:
    # The innermost frames say where it broke, so those are the ones kept.
    return "".join(
        traceback.format_exception(type(exception), exception, exception.__traceback__, limit=-TRACEBACK_FRAMES)
    )
