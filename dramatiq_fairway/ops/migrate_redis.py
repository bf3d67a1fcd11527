"""``fairway migrate`` on Redis: stock ``RedisBroker`` keys into ``FairRedisBroker``'s layout.

Stock Dramatiq keeps a queue ``q`` as ``<stock>:q`` (ids) + ``<stock>:q.msgs`` (bodies), its
delayed messages as ``<stock>:q.DQ`` (+ ``.msgs``) and its dead ones as ``<stock>:q.XQ`` (a zset,
+ ``.msgs``); the names are in ``store/keys.py``. Batches of ids are read from the head of each,
their bodies decoded here for the level and the tenant, and ``FairRedisBroker.adopt`` moves each
message in one script call: ready ones to the tail of their (level, tenant) FIFO, delayed ones to
the delay queue (their eta is in the body, as fairway's own), dead ones to fairway's dead messages.
An id a live stock worker holds is not waiting in the list, so it is left for that worker; the
ack sets of stock workers silent for longer than stock Dramatiq's heartbeat timeout (60 s) move
too, since no stock worker will give them back once none runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from dramatiq import Message
from dramatiq.common import dq_name, q_name, xq_name

from ..brokers.fair_redis import FairRedisBroker
from ..errors import FairwayError
from ..priority import Priority, level_of
from ..redis_cluster import is_cluster
from ..store.keys import (
    stock_acks_key,
    stock_bodies_key,
    stock_bodies_pattern,
    stock_heartbeats_key,
    stock_ids_key,
)
from ..tenants import DEFAULT_TENANT, tenant_of
from .controls import UnknownQueue, known_queues
from .migration_report import Migrated

DEFAULT_STOCK_NAMESPACE = "dramatiq"
# Ids moved per script call: long enough to amortise the round trip, short enough not to hold
# Redis for more than about a millisecond.
BATCH = 200
# Stock RedisBroker's default heartbeat_timeout: a worker silent this long is dead to it too.
STOCK_HEARTBEAT_TIMEOUT_MS = 60_000


def migrate_redis(
    broker: FairRedisBroker,
    queue_names: Sequence[str],
    *,
    dry_run: bool,
    stock_namespace: str = DEFAULT_STOCK_NAMESPACE,
) -> list[Migrated]:
    if is_cluster(broker.client):
        # Each adopt call reads the stock keys and writes the queue's in one script: one slot.
        raise FairwayError(
            "fairway migrate needs one Redis server: stock Dramatiq does not run on Redis Cluster, "
            "so its queues are never there (FAIRWAY_REDIS_URL is a redis+cluster:// URL)"
        )
    if queue_names:
        wanted = sorted({q_name(name) for name in queue_names})
        known = known_queues(broker)
        for name in wanted:
            if name not in known and not _has_stock_keys(broker, stock_namespace, name):
                raise UnknownQueue(name, f" (nor has it keys under stock namespace {stock_namespace!r})")
    else:
        wanted = sorted(_stock_queues(broker, stock_namespace))
    return [_migrate_queue(broker, stock_namespace, queue, dry_run) for queue in wanted]


def _stock_queues(broker: FairRedisBroker, stock_namespace: str) -> set[str]:
    """The queues with stock keys: an operator command, so SCAN is fine (no hot path runs it)."""
    prefix = f"{stock_namespace}:"
    names = set()
    for key in broker.client.scan_iter(match=stock_bodies_pattern(stock_namespace), count=1000):
        names.add(q_name(key.decode().removeprefix(prefix).removesuffix(".msgs").removesuffix(".XQ")))
    return names


def _has_stock_keys(broker: FairRedisBroker, stock_namespace: str, queue: str) -> bool:
    names = (queue, dq_name(queue), xq_name(queue))
    return bool(broker.client.exists(*(stock_bodies_key(stock_namespace, name) for name in names)))


def _migrate_queue(broker: FairRedisBroker, stock_namespace: str, queue: str, dry_run: bool) -> Migrated:
    dead_workers = _dead_stock_workers(broker, stock_namespace)
    counts = {}
    for column, part, stock_queue in (
        ("ready", "q", queue),
        ("delayed", "dq", dq_name(queue)),
        ("dead", "xq", xq_name(queue)),
    ):
        bodies = stock_bodies_key(stock_namespace, stock_queue)
        sources = [stock_ids_key(stock_namespace, stock_queue)]
        if part != "xq":
            sources += [stock_acks_key(stock_namespace, worker, stock_queue) for worker in dead_workers]
        counts[column] = sum(
            _count(broker, source) if dry_run else _move(broker, queue, part, (source, bodies)) for source in sources
        )
    return Migrated(queue=queue, **counts)


def _dead_stock_workers(broker: FairRedisBroker, stock_namespace: str) -> list[str]:
    """Stock workers silent for longer than stock Dramatiq's heartbeat timeout: what their ack sets
    hold, no stock worker will give back once none runs, so it moves too."""
    seconds, micros = broker.client.time()
    stale = seconds * 1000 + micros // 1000 - STOCK_HEARTBEAT_TIMEOUT_MS
    return [
        worker.decode() for worker in broker.client.zrangebyscore(stock_heartbeats_key(stock_namespace), "-inf", stale)
    ]


def _count(broker: FairRedisBroker, source: str) -> int:
    client = broker.client
    counter = {"list": client.llen, "zset": client.zcard, "set": client.scard}.get(client.type(source).decode())
    return int(counter(source)) if counter else 0


def _ids(broker: FairRedisBroker, source: str) -> list[bytes]:
    """Up to BATCH ids of ``source``, from the head of a list or zset."""
    kind = broker.client.type(source).decode()
    if kind == "list":
        return list(broker.client.lrange(source, 0, BATCH - 1))
    if kind == "zset":
        return list(broker.client.zrange(source, 0, BATCH - 1))
    if kind == "set":
        return list(broker.client.srandmember(source, BATCH))
    return []


def _move(broker: FairRedisBroker, queue: str, part: str, keys: tuple[str, str]) -> int:
    moved = 0
    while ids := _ids(broker, keys[0]):
        bodies = broker.client.hmget(keys[1], ids)
        entries = [(rid.decode(), *_level_and_tenant(body)) for rid, body in zip(ids, bodies, strict=True)]
        # Every id read is gone from the stock keys after the call (moved, or dropped when bodyless,
        # or taken by a stock worker meanwhile), so the loop ends.
        moved += broker.adopt(queue, part, keys, entries)
    return moved


def _level_and_tenant(body: bytes | None) -> tuple[Priority, str]:
    """Where a stock body goes; one that does not decode goes to NORMAL of the default tenant, where
    fairway's consumer dead-letters it by id as it does any undecodable body."""
    try:
        options = Message.decode(body or b"").options
        return level_of(options), tenant_of(options)
    except Exception:
        return Priority.NORMAL, DEFAULT_TENANT
