"""Paused queues in fairway's consumer, for brokers without their own pause (RabbitMQ).

A message picked before the consumer noticed the pause (``brokers/rabbitmq_pause.py``) is held
back once by :class:`QueuePause`: it waits on the delay queue for :data:`PAUSE_HOLD_MS` and comes
back, firing no middleware hook. Each worker process reads the paused set (``store/pauses.py``)
at most once per :data:`CACHE_SECONDS`. Pausing and resuming: ``ops/controls.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol, TypeGuard

import redis
from dramatiq import Broker, Message, Middleware
from dramatiq.common import q_name
from dramatiq.logging import get_logger

from ..settings import Settings, load_settings
from ..store.pauses import PausedQueues

PAUSE_HOLD_MS = 1000
CACHE_SECONDS = 1.0


class PausableBroker(Protocol):
    """A broker that pauses queues itself (``FairRedisBroker``)."""

    def pause(self, queue_name: str) -> None: ...

    def resume(self, queue_name: str) -> None: ...

    def paused_queues(self) -> Iterable[str]: ...


def has_own_pause(broker: object) -> TypeGuard[PausableBroker]:
    # Per message (QueuePause.hold): looked up once per broker class, not a runtime Protocol check.
    kind = type(broker)
    pausable = _PAUSABLE.get(kind)
    if pausable is None:
        pausable = _PAUSABLE[kind] = all(hasattr(kind, name) for name in ("pause", "resume", "paused_queues"))
    return pausable


_PAUSABLE: dict[type, bool] = {}


class QueuePause(Middleware):
    """Holds back messages of paused queues in fairway's consumer (brokers without their own pause).

    Needs a fairway consumer (``FairwayRabbitmqBroker``), which calls :meth:`hold` before a worker
    sees a message; on a broker with its own pause it does nothing. When the state store cannot
    be read, the last known set is kept (a queue stays paused, or running, as it was).
    """

    def __init__(self, *, settings: Settings | None = None, paused: PausedQueues | None = None) -> None:
        self.logger = get_logger(__name__, type(self))
        self.settings = settings or load_settings()
        self._paused = paused
        self._names: set[str] = set()
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def hold(self, broker: Broker, message: Message[Any]) -> int | None:
        return PAUSE_HOLD_MS if self.is_paused(broker, message.queue_name) else None

    def is_paused(self, broker: Broker, queue_name: str) -> bool:
        """Whether fairway's consumer must keep ``queue_name`` still (never, on a broker with its own pause)."""
        return not has_own_pause(broker) and q_name(queue_name) in self._current()

    def _current(self) -> set[str]:
        with self._lock:
            if time.monotonic() - self._read_at >= CACHE_SECONDS:
                if self._paused is None:
                    self._paused = PausedQueues.from_settings(self.settings)
                try:
                    self._names = self._paused.names()
                except redis.RedisError as error:
                    self.logger.warning("Cannot read paused queues, keeping the last known set: %s", error)
                self._read_at = time.monotonic()
            return self._names
