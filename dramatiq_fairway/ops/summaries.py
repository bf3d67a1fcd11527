"""What the dashboard shows about queues and workers, read through the brokers' Python API.

The dashboard reaches the brokers only through ``ops/``; this module is the one place to swap when
``fairway queues`` / ``fairway workers`` gain a shared listing API (RabbitMQ counters per level and
tenant, worker listings on both brokers): the pages only use :func:`queue_summaries` and
:func:`live_workers`.

Today:

- Redis (``FairRedisBroker``): queues are ``known_queues()`` and rows are ``queue_depths()``
  (ready, delayed and in flight per level x tenant, from the dispatch script's counters).
  Workers are the broker's heartbeats (``{ns:workers}:heartbeats``) with their age by the Redis
  server's clock.
- RabbitMQ: AMQP reports one ready count per AMQP queue, so rows are per level with tenant
  ``all`` when the broker counts its level queues (``ready_by_level``), else one row for the
  queue; ``delayed`` comes from a passive declare of the delay queue (its own row), in flight is
  unknown. RabbitMQ workers are not listed.

Queue names are the broker's ``known_queues()`` where it has one (a registry shared by every
process), those this process declared, the paused ones and those seen in the dead-letter store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pika
from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name, q_name

from ..brokers.fair_redis import FairRedisBroker
from ..settings import Settings
from ..store.dead_letters import DeadLetterStore
from ..store.workers import WorkerRegistry
from .controls import paused_queues

ALL = "all"
T = TypeVar("T")


@dataclass(frozen=True)
class QueueSummary:
    """One queue: its rows per level x tenant (the ``fairway queues --json`` shape) and totals."""

    name: str
    paused: bool
    dead: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    # Whether rows count per tenant (a tenant without a row then has nothing waiting).
    per_tenant: bool = False

    @property
    def ready(self) -> int:
        return sum(int(row["ready"]) for row in self.rows)

    @property
    def delayed(self) -> int:
        return sum(int(row["delayed"]) for row in self.rows)

    @property
    def in_flight(self) -> int | None:
        counts = [row["in_flight"] for row in self.rows]
        return None if any(count is None for count in counts) else sum(counts)


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    heartbeat_age: float
    queues: list[str]
    metrics: str | None = None

    @property
    def metrics_unreadable(self) -> bool:
        return (self.metrics or "").startswith("unavailable")


def queue_summaries(broker: Broker, settings: Settings, dead_letters: DeadLetterStore) -> list[QueueSummary]:
    """Every queue the broker, the pause flags and the dead-letter store know of, sorted by name."""
    dead = {row.key: row.count for row in dead_letters.stats(by="queue")}
    paused = paused_queues(broker, settings)
    names = {q_name(name) for name in broker.get_declared_queues()} | paused | set(dead)
    known = getattr(broker, "known_queues", None)
    if callable(known):
        names |= {q_name(name) for name in known()}
    summaries = []
    for name in sorted(names):
        summaries.append(
            QueueSummary(
                name=name,
                paused=name in paused,
                dead=dead.get(name, 0),
                rows=_rows(broker, name),
                per_tenant=isinstance(broker, FairRedisBroker),
            )
        )
    return summaries


def live_workers(registry: WorkerRegistry, *, stale: bool = False) -> list[WorkerInfo]:
    """Worker processes whose heartbeat is fresh (``fairway workers``), freshest first; with
    ``stale``, those whose heartbeat stopped within the last hour instead (marked, not dropped)."""
    now = registry.clock()
    workers = [
        WorkerInfo(
            id=info.id,
            heartbeat_age=max(0.0, (now - info.beat_at).total_seconds()),
            queues=info.queues,
            metrics=info.metrics,
        )
        for info in (registry.stale() if stale else registry.live())
    ]
    return sorted(workers, key=lambda worker: worker.heartbeat_age)


def _rows(broker: Broker, queue: str) -> list[dict[str, Any]]:
    if isinstance(broker, FairRedisBroker):
        return broker.queue_depths(queue)
    if not isinstance(broker, RabbitmqBroker):
        return []
    rows = []
    by_level = getattr(broker, "ready_by_level", None)
    if callable(by_level):
        ready = _passive(broker, lambda: {level.name: count for level, count in by_level(queue).items()})
    else:
        ready = _passive(broker, lambda: {ALL: _ready(broker, queue)})
    for level, count in (ready or {}).items():
        rows.append(_row(queue, level, ready=count))
    delayed = _passive(broker, lambda: _ready(broker, dq_name(queue)))
    if delayed:
        rows.append(_row(queue, ALL, delayed=delayed))
    return rows


def _row(queue: str, level: str, *, ready: int = 0, delayed: int = 0) -> dict[str, Any]:
    return {
        "queue": queue,
        "priority_level": level,
        "tenant": ALL,
        "ready": ready,
        "delayed": delayed,
        "in_flight": None,
    }


def _ready(broker: RabbitmqBroker, name: str) -> int:
    return int(broker.channel.queue_declare(queue=name, passive=True).method.message_count)


def _passive(broker: RabbitmqBroker, count: Callable[[], T]) -> T | None:
    """``count()``, or None when a queue it looks at does not exist (looking never creates one)."""
    try:
        return count()
    except pika.exceptions.ChannelClosedByBroker:
        # The refused declare closed the channel; this thread opens a new one next time.
        with contextlib.suppress(AttributeError):
            del broker.channel
        return None
