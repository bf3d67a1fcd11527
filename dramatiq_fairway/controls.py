"""Operator controls: pause and resume a queue.

A paused queue keeps its messages; workers stop starting them within a second and start them
again after ``resume``, with nothing lost and no retry used.

- On a broker with its own pause (``FairRedisBroker``: ``pause(queue)``, ``resume(queue)``,
  ``paused_queues()``), the broker's dispatch script skips paused queues; its flag lives in the
  broker's Redis under the queue's hash tag (docs/design.md, "Redis keys").
- Otherwise (RabbitMQ) the flag lives in the state store, in the set ``{namespace}:paused``
  (no TTL: a queue stays paused until resumed). Fairway's consumer stops consuming a paused
  queue, so its messages stay ready on RabbitMQ (``brokers/rabbitmq_pause.py``); a message picked
  before the consumer noticed is held back once by :class:`QueuePause`: it waits on the delay
  queue for :data:`PAUSE_HOLD_MS` and comes back, firing no middleware hook. Each worker process
  reads the set at most once per :data:`CACHE_SECONDS`.

``Worker.pause()`` is not used: it pauses a whole process, and a paused Redis worker stops
heartbeating, so its in-flight messages would be requeued and run twice.
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
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .connections import state_store_client
from .errors import FairwayError
from .settings import Settings, load_settings

PAUSE_HOLD_MS = 1000
CACHE_SECONDS = 1.0


class PausedQueues:
    """The state-store set of paused queue names (for brokers without their own pause)."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.key = f"{namespace}:paused"

    @classmethod
    def from_settings(cls, settings: Settings) -> PausedQueues:
        # One quick retry: consumers read this on their hot path; an outage must not stall them.
        return cls(
            state_store_client(settings, retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1)), settings.namespace
        )

    def pause(self, queue_name: str) -> bool:
        """Pause ``queue_name``; False when it was already paused."""
        return bool(self.client.sadd(self.key, q_name(queue_name)))

    def resume(self, queue_name: str) -> bool:
        """Resume ``queue_name``; False when it was not paused."""
        return bool(self.client.srem(self.key, q_name(queue_name)))

    def names(self) -> set[str]:
        return {name.decode() if isinstance(name, bytes) else name for name in self.client.smembers(self.key)}


class UnknownQueue(FairwayError):
    """No worker declared the queue and no message used it (a typo, most likely)."""

    def __init__(self, queue_name: str, hint: str = "") -> None:
        super().__init__(f"queue {queue_name!r} is unknown: no worker declared it and no message used it{hint}")


def known_queues(broker: Broker) -> set[str]:
    """Queues any process declared or sent to on this namespace (the brokers' registries), and this one's."""
    lister = getattr(broker, "known_queues", None)
    registered = lister() if callable(lister) else []
    return {q_name(name) for name in [*registered, *broker.get_declared_queues()]}


def require_known(broker: Broker, queue_names: Iterable[str], settings: Settings | None = None, hint: str = "") -> None:
    """Raise :class:`UnknownQueue` for the first of ``queue_names`` that is neither known nor paused."""
    wanted = {q_name(name): name for name in queue_names}
    if not wanted:
        return
    known = known_queues(broker)
    missing = [name for canonical, name in wanted.items() if canonical not in known]
    if missing:
        missing = [name for name in missing if q_name(name) not in paused_queues(broker, settings)]
    if missing:
        raise UnknownQueue(missing[0], hint)


def pause_queue(broker: Broker, queue_name: str, settings: Settings | None = None, *, create: bool = False) -> bool:
    """Stop workers from starting jobs of ``queue_name``; False when it was already paused.

    An unknown queue raises :class:`UnknownQueue` unless ``create`` (a pause set ahead of deployment).
    """
    if not create:
        require_known(broker, [queue_name], settings, " (pause it ahead of deployment with --create)")
    if _has_own_pause(broker):
        was_paused = q_name(queue_name) in broker.paused_queues()
        broker.pause(q_name(queue_name))
        return not was_paused
    return PausedQueues.from_settings(settings or load_settings()).pause(queue_name)


def resume_queue(broker: Broker, queue_name: str, settings: Settings | None = None) -> bool:
    """Let workers start jobs of ``queue_name`` again; False when it was not paused.

    An unknown queue (neither known nor paused) raises :class:`UnknownQueue`."""
    require_known(broker, [queue_name], settings)
    if _has_own_pause(broker):
        was_paused = q_name(queue_name) in broker.paused_queues()
        broker.resume(q_name(queue_name))
        return was_paused
    return PausedQueues.from_settings(settings or load_settings()).resume(queue_name)


def paused_queues(broker: Broker, settings: Settings | None = None) -> set[str]:
    """The names of the paused queues."""
    if _has_own_pause(broker):
        return set(broker.paused_queues())
    return PausedQueues.from_settings(settings or load_settings()).names()


class PausableBroker(Protocol):
    """A broker that pauses queues itself (``FairRedisBroker``)."""

    def pause(self, queue_name: str) -> None: ...

    def resume(self, queue_name: str) -> None: ...

    def paused_queues(self) -> Iterable[str]: ...


def _has_own_pause(broker: object) -> TypeGuard[PausableBroker]:
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
        return not _has_own_pause(broker) and q_name(queue_name) in self._current()

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
