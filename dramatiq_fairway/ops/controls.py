"""Operator controls: pause and resume a queue.

A paused queue keeps its messages; workers stop starting them within a second and start them
again after ``resume``, with nothing lost and no retry used.

- On a broker with its own pause (``FairRedisBroker``: ``pause(queue)``, ``resume(queue)``,
  ``paused_queues()``), the broker's dispatch script skips paused queues; its flag lives in the
  broker's Redis under the queue's hash tag (docs/design.md, "Redis keys").
- Otherwise (RabbitMQ) the flag lives in the state store, in the set ``{namespace}:paused``
  (``store/pauses.py``; no TTL: a queue stays paused until resumed). Fairway's consumer stops
  consuming a paused queue, so its messages stay ready on RabbitMQ (``brokers/rabbitmq_pause.py``);
  a message picked before the consumer noticed is held back once by ``QueuePause``
  (``middlewares/pause.py``).

``Worker.pause()`` is not used: it pauses a whole process, and a paused Redis worker stops
heartbeating, so its in-flight messages would be requeued and run twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from dramatiq import Broker
from dramatiq.common import q_name

from ..errors import FairwayError
from ..middlewares.pause import has_own_pause
from ..settings import Settings, load_settings
from ..store.pauses import PausedQueues

__all__ = [
    "UnknownQueue",
    "known_queues",
    "pause_queue",
    "paused_queues",
    "require_known",
    "resume_queue",
]


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
    if has_own_pause(broker):
        was_paused = q_name(queue_name) in broker.paused_queues()
        broker.pause(q_name(queue_name))
        return not was_paused
    return PausedQueues.from_settings(settings or load_settings()).pause(queue_name)


def resume_queue(broker: Broker, queue_name: str, settings: Settings | None = None) -> bool:
    """Let workers start jobs of ``queue_name`` again; False when it was not paused.

    An unknown queue (neither known nor paused) raises :class:`UnknownQueue`."""
    require_known(broker, [queue_name], settings)
    if has_own_pause(broker):
        was_paused = q_name(queue_name) in broker.paused_queues()
        broker.resume(q_name(queue_name))
        return was_paused
    return PausedQueues.from_settings(settings or load_settings()).resume(queue_name)


def paused_queues(broker: Broker, settings: Settings | None = None) -> set[str]:
    """The names of the paused queues."""
    if has_own_pause(broker):
        return set(broker.paused_queues())
    return PausedQueues.from_settings(settings or load_settings()).names()
