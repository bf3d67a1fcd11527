"""``fairway migrate`` on Redis: stock ``RedisBroker`` keys into ``FairRedisBroker``'s layout.

Stock Dramatiq keeps a queue ``q`` as ``<stock>:q`` (ids) + ``<stock>:q.msgs`` (bodies), its
delayed messages as ``<stock>:q.DQ`` (+ ``.msgs``) and its dead ones as ``<stock>:q.XQ`` (a zset,
+ ``.msgs``); the names are in ``store/keys.py``. Batches of ids are read from the head of each,
their bodies decoded here for the level and the tenant, and ``FairRedisBroker.adopt`` moves each
message in one script call: ready ones to the tail of their (level, tenant) FIFO, delayed ones to
the delay queue (their eta is in the body, as fairway's own), dead ones to fairway's dead messages.
An id a stock worker still holds is not waiting in the list, so it is left for that worker.
"""

from __future__ import annotations

from collections.abc import Sequence

from dramatiq import Message
from dramatiq.common import dq_name, q_name, xq_name

from ..brokers.fair_redis import FairRedisBroker
from ..priority import Priority, level_of
from ..store.keys import stock_bodies_key, stock_bodies_pattern, stock_ids_key
from ..tenants import DEFAULT_TENANT, tenant_of
from .controls import UnknownQueue, known_queues
from .migration_report import Migrated

DEFAULT_STOCK_NAMESPACE = "dramatiq"
# Ids moved per script call: long enough to amortise the round trip, short enough not to hold
# Redis for more than about a millisecond.
BATCH = 200


def migrate_redis(
    broker: FairRedisBroker,
    queue_names: Sequence[str],
    *,
    dry_run: bool,
    stock_namespace: str = DEFAULT_STOCK_NAMESPACE,
) -> list[Migrated]:
    stock_queues = _stock_queues(broker, stock_namespace)
    if queue_names:
        known = known_queues(broker)
        for name in queue_names:
            if q_name(name) not in stock_queues and q_name(name) not in known:
                raise UnknownQueue(name, f" (nor has it keys under stock namespace {stock_namespace!r})")
        wanted = sorted({q_name(name) for name in queue_names})
    else:
        wanted = sorted(stock_queues)
    return [_migrate_queue(broker, stock_namespace, queue, dry_run) for queue in wanted]


def _stock_queues(broker: FairRedisBroker, stock_namespace: str) -> set[str]:
    """The queues with stock keys: an operator command, so SCAN is fine (no hot path runs it)."""
    prefix = f"{stock_namespace}:"
    names = set()
    for key in broker.client.scan_iter(match=stock_bodies_pattern(stock_namespace), count=1000):
        names.add(q_name(key.decode().removeprefix(prefix).removesuffix(".msgs").removesuffix(".XQ")))
    return names


def _migrate_queue(broker: FairRedisBroker, stock_namespace: str, queue: str, dry_run: bool) -> Migrated:
    counts = {}
    for column, part, stock_queue in (
        ("ready", "q", queue),
        ("delayed", "dq", dq_name(queue)),
        ("dead", "xq", xq_name(queue)),
    ):
        keys = (stock_ids_key(stock_namespace, stock_queue), stock_bodies_key(stock_namespace, stock_queue))
        if dry_run:
            counts[column] = _waiting(broker, part, keys[0])
        else:
            counts[column] = _move(broker, queue, part, keys)
    return Migrated(queue=queue, **counts)


def _waiting(broker: FairRedisBroker, part: str, ids_key: str) -> int:
    return int(broker.client.zcard(ids_key) if part == "xq" else broker.client.llen(ids_key))


def _move(broker: FairRedisBroker, queue: str, part: str, keys: tuple[str, str]) -> int:
    moved = 0
    while True:
        if part == "xq":
            ids = broker.client.zrange(keys[0], 0, BATCH - 1)
        else:
            ids = broker.client.lrange(keys[0], 0, BATCH - 1)
        if not ids:
            return moved
        bodies = broker.client.hmget(keys[1], ids)
        entries = [(rid.decode(), *_level_and_tenant(body)) for rid, body in zip(ids, bodies, strict=True)]
        # Every id read is gone from the stock keys after the call (moved, or dropped when bodyless,
        # or taken by a stock worker meanwhile), so the loop ends.
        moved += broker.adopt(queue, part, keys, entries)


def _level_and_tenant(body: bytes | None) -> tuple[Priority, str]:
    """Where a stock body goes; one that does not decode goes to NORMAL of the default tenant, where
    fairway's consumer dead-letters it by id as it does any undecodable body."""
    try:
        options = Message.decode(body or b"").options
        return level_of(options), tenant_of(options)
    except Exception:
        return Priority.NORMAL, DEFAULT_TENANT
