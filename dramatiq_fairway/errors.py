"""Exceptions users raise in actors, and the ones fairway raises at them.

Classification results (see ``ClassifiedRetries``) are ``transient``, ``permanent``,
``rate_limited``, ``unknown`` and ``interrupted``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dramatiq.middleware import Interrupt


class FairwayError(Exception):
    """Base of every error fairway raises."""


class ConfigError(FairwayError):
    """Invalid configuration. The message is one line naming the setting and the bad value."""


class TransientError(FairwayError):
    """Raise to say: this failure will likely pass; retry with backoff."""


class PermanentError(FairwayError):
    """Raise to say: retrying cannot help; dead-letter the job at once."""


class RateLimited(TransientError):
    """A dependency asked us to wait ``retry_after`` seconds before calling it again."""

    def __init__(self, retry_after: float, message: str = "") -> None:
        self.retry_after = float(retry_after)
        super().__init__(message or f"rate limited; retry after {self.retry_after:g}s")


class BreakerOpen(FairwayError):
    """The circuit breaker guarding a dependency is open."""

    def __init__(self, key: str, retry_at: float) -> None:
        self.key = key
        self.retry_at = retry_at
        super().__init__(f"breaker {key!r} is open until {retry_at:.3f}")


class QueueFull(FairwayError):
    """A tenant (or the queue) is over its capacity; CRITICAL messages are exempt."""


class MessageTooLarge(FairwayError):
    """The encoded message is larger than ``FAIRWAY_MAX_MESSAGE_BYTES``."""


class SoftTimeLimitExceeded(Interrupt):
    """Raised inside an actor when its ``soft_time_limit`` passes (inside an ``async def`` actor too,
    at its current ``await``: see :mod:`dramatiq_fairway.middlewares.asyncio`)."""


class Cancelled(Interrupt):
    """Raised inside an actor whose job was cancelled by an operator."""


class MessagesRefused(FairwayError):
    """Some messages of an ``enqueue_many`` batch were refused; the others were enqueued.

    ``refused``: (position in the batch, message, the error that refused it), one line each in the
    text; ``enqueued``: the messages that were enqueued, in batch order.
    """

    def __init__(self, refused: Sequence[tuple[int, Any, BaseException]], enqueued: Sequence[Any]) -> None:
        self.refused = list(refused)
        self.enqueued = list(enqueued)
        lines = [
            f"message {index} ({message.message_id}, actor {message.actor_name!r}): {type(error).__name__}: {error}"
            for index, message, error in refused
        ]
        super().__init__(
            f"{len(refused)} of {len(refused) + len(enqueued)} messages refused, the others enqueued:\n"
            + "\n".join(lines)
        )
