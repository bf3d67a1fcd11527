"""Queue depths per queue x priority level x tenant (``fairway queues``, docs/design.md).

- ``FairRedisBroker``: exact, from the counters its dispatch script keeps (``queue_depths``):
  ready, delayed and in flight per (level, tenant).
- ``FairwayRabbitmqBroker``: ready per (level, tenant) from the counts the broker keeps in the
  state store (``store/tenant_counts.py``: from publish until settled, so a running message is
  counted there too and ``in_flight`` is None); messages on the old single queue (from before the
  level queues) are NORMAL of tenant ``"*"``; the delay queue and ``.XQ`` hold every level and
  tenant, so their counts are on a row of level and tenant ``"*"``.
- ``held`` on both: the ready messages of a paused queue (they wait for ``resume``; their
  ``ready`` is 0). Messages a breaker or a tenant limit holds back wait on the delay queue with an
  eta and count as ``delayed`` (docs/fairness.md, "Holding").
- ``dead`` on both: the dead-letter records of the queue in the state store, per level and tenant
  (plus, on RabbitMQ, the ``.XQ`` messages nacked without a record).

Only rows with something in them are listed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from dramatiq import Broker
from dramatiq.common import dq_name, q_name, xq_name
from pydantic import BaseModel

from ..brokers.fair_redis import FairRedisBroker
from ..brokers.rabbitmq import FairwayRabbitmqBroker
from ..priority import Priority
from ..settings import Settings, load_settings
from ..store.dead_letters import DeadLetterFilter, DeadLetterStore
from ..store.limits import TenantLimits
from .controls import paused_queues

ANY = "*"


class QueueDepth(BaseModel):
    queue: str
    priority_level: str
    tenant: str
    ready: int = 0
    delayed: int = 0
    held: int = 0
    in_flight: int | None = 0
    dead: int = 0
    in_flight_cap: int | None = None
    rate: float | None = None


class UnsupportedBroker(TypeError):
    """Depths need one of fairway's brokers."""


def queue_depths(broker: Broker, settings: Settings | None = None, queues: Iterable[str] = ()) -> list[QueueDepth]:
    """Rows for ``queues`` (every known queue when empty), sorted by queue, level and tenant."""
    settings = settings or load_settings()
    if not isinstance(broker, FairRedisBroker | FairwayRabbitmqBroker):
        raise UnsupportedBroker(f"broker: {type(broker).__name__} keeps no depths; use FairRedisBroker or RabbitMQ")
    names = sorted({q_name(name) for name in queues}) or broker.known_queues()
    paused = paused_queues(broker, settings)
    # A queue paused ahead of deployment has no AMQP queues to count yet (a passive declare would fail).
    declared = set(broker.known_queues()) if isinstance(broker, FairwayRabbitmqBroker) else None
    store = DeadLetterStore(settings)
    rows: list[QueueDepth] = []
    for name in names:
        dead = Counter(
            (record.priority_level, record.tenant) for record in store.iter_records(DeadLetterFilter(queue=name))
        )
        if isinstance(broker, FairRedisBroker):
            rows += _merge(name, [QueueDepth(**row) for row in broker.queue_depths(name)], dead)
        elif declared is None or name in declared:
            rows += _rabbitmq_rows(broker, name, dead)
        if name in paused:
            for row in rows:
                if row.queue == name:
                    row.held, row.ready = row.ready, 0
    _add_limits(
        broker.tenant_limits if isinstance(broker, FairRedisBroker) else TenantLimits.from_settings(settings), rows
    )
    return rows


def _add_limits(limits: TenantLimits, rows: list[QueueDepth]) -> None:
    """Each tenant's cap and rate (docs/limits.md), on the rows of that tenant."""
    tenants: dict[str, set[str]] = {}
    for row in rows:
        if row.tenant != ANY:
            tenants.setdefault(row.queue, set()).add(row.tenant)
    effective = {queue: limits.effective(queue, names) for queue, names in tenants.items()}
    for row in rows:
        limit = effective.get(row.queue, {}).get(row.tenant)
        if limit is not None:
            row.in_flight_cap, row.rate = limit.max_concurrency, limit.rate


def _merge(queue: str, rows: list[QueueDepth], dead: Counter[tuple[str, str]]) -> list[QueueDepth]:
    by_key = {(row.priority_level, row.tenant): row for row in rows}
    for (level, tenant), count in dead.items():
        by_key.setdefault((level, tenant), QueueDepth(queue=queue, priority_level=level, tenant=tenant)).dead = count
    return sorted(
        (row for row in by_key.values() if row.ready or row.delayed or row.held or row.in_flight or row.dead),
        key=lambda row: (_rank(row.priority_level), row.tenant),
    )


def _rabbitmq_rows(broker: FairwayRabbitmqBroker, queue: str, dead: Counter[tuple[str, str]]) -> list[QueueDepth]:
    rows = [
        QueueDepth(queue=queue, priority_level=level.name, tenant=tenant, ready=count)
        for (level, tenant), count in broker.queued_by_tenant(queue).items()
    ]
    unplaced = QueueDepth(
        queue=queue,
        priority_level=ANY,
        tenant=ANY,
        delayed=broker.passive_count(dq_name(queue)) + broker.parked_count(queue),
        dead=broker.passive_count(xq_name(queue)),
    )
    legacy = QueueDepth(queue=queue, priority_level=Priority.NORMAL.name, tenant=ANY, ready=broker.passive_count(queue))
    merged = _merge(queue, [*rows, legacy, unplaced], dead)
    for row in merged:
        row.in_flight = None
    return merged


def _rank(level: str) -> int:
    return Priority[level].value if level in Priority.__members__ else len(Priority) + 1
