"""Partitions of a queue on Redis: ``FAIRWAY_FAIRNESS__PARTITIONS`` (docs/design.md, "Partitions").

A queue split into N partitions keeps N complete copies of its layout (``fair_redis.lua``'s keys),
each under its own hash tag, so that on Redis Cluster they land on different slots and can spread
over the masters. Partition 0 is the queue's own prefix ``{ns:q}``: with N = 1 nothing changes.
Partition i > 0 is ``{ns:q#i.k}``, with the smallest k whose slot falls in the i-th N-th of the
slot space after partition 0's (``--cluster create`` gives each master an equal, contiguous range,
so N partitions on N masters land one per master). ``#`` cannot appear in a Dramatiq queue name,
so no queue's prefix is another's partition.

A tenant lives in one partition (``partition_of``, a stable hash): its FIFO, its in-flight count
and its limits are whole there. A broker id (``redis_message_id``) of partition i > 0 starts with
``i:`` (a uuid has no colon), so settling a message needs no lookup.

The prefixes of each queue's partitions are kept in ``{ns:workers}:partitions`` (``PartitionTags``):
readers (``fairway queues``, limits, recovery) see every partition even when their own settings
say fewer, and workers keep draining partitions a smaller N left. Changing N moves tenants to
other partitions: a tenant's messages queued before the change may then run out of order.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache
from typing import cast

import redis
from dramatiq.common import q_name
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Seconds a process trusts its copy of a queue's stored partition count.
COUNT_TTL = 5.0


def partition_of(tenant: str, count: int) -> int:
    """The partition of ``tenant``: stable across processes and restarts (not Python's salted ``hash``)."""
    if count <= 1:
        return 0
    return int.from_bytes(hashlib.blake2b(tenant.encode(), digest_size=8).digest(), "big") % count


def preferred_partition(worker: str, count: int) -> int:
    """Where ``worker`` starts its turn over the partitions, so that workers start apart."""
    return partition_of("worker:" + worker, count)


@lru_cache(maxsize=4096)
def partition_prefix(namespace: str, queue_name: str, index: int, count: int) -> str:
    """The hash-tagged key prefix of partition ``index`` of ``count`` of ``queue_name``."""
    base = f"{namespace}:{q_name(queue_name)}"
    if index == 0:
        return "{" + base + "}"
    target = (_range_of(base, count) + index) % count
    k = 0
    while _range_of(f"{base}#{index}.{k}", count) != target:
        k += 1
    return "{" + f"{base}#{index}.{k}" + "}"


def _range_of(tag: str, count: int) -> int:
    return key_slot(("{" + tag + "}").encode()) * count // REDIS_CLUSTER_HASH_SLOTS


def rid_in_partition(index: int, rid: str) -> str:
    return rid if index == 0 else f"{index}:{rid}"


def partition_of_rid(rid: str) -> int:
    head, sep, _rest = rid.partition(":")
    return int(head) if sep else 0


class PartitionTags:
    """The partition prefixes of each queue of a namespace, as stored in ``{ns:workers}:partitions``.

    The hash maps a queue to its prefixes, space-separated, partition 0 first. Raising the count
    appends prefixes (each computed for the count it was created under, so earlier partitions keep
    their keys); lowering it keeps them, so workers drain what is left there.
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.key = "{" + f"{namespace}:workers" + "}:partitions"
        self._cache: dict[str, tuple[list[str], float]] = {}

    def prefixes(self, queue_name: str, configured: int = 1) -> list[str]:
        """Every partition prefix of ``queue_name``: at least ``configured`` of them (stored if new)."""
        queue = q_name(queue_name)
        cached = self._cache.get(queue)
        if cached is None or time.monotonic() - cached[1] > COUNT_TTL or len(cached[0]) < configured:
            raw = self.client.hget(self.key, queue)
            stored = self._decoded(queue, raw)
            if len(stored) < configured:
                stored = self._extend(queue, configured)
            cached = (stored, time.monotonic())
            self._cache[queue] = cached
        return cached[0]

    def _extend(self, queue: str, configured: int) -> list[str]:
        """Append prefixes up to ``configured``, atomically (WATCH): two processes raising the count
        at once must not each write a list the other's messages are missing from."""

        def append(pipe: redis.client.Pipeline) -> list[str]:
            # Watching, the pipeline runs commands at once and returns their replies.
            stored = self._decoded(queue, cast(bytes | None, pipe.hget(self.key, queue)))
            added = [partition_prefix(self.namespace, queue, i, configured) for i in range(len(stored), configured)]
            if added:
                pipe.multi()
                pipe.hset(self.key, queue, " ".join(stored + added))
            return stored + added

        extended: list[str] = self.client.transaction(append, self.key, value_from_callable=True)
        return extended

    def _decoded(self, queue: str, raw: bytes | None) -> list[str]:
        return raw.decode().split() if raw else [partition_prefix(self.namespace, queue, 0, 1)]


class PartitionTurns:
    """Which partition a worker fetches from next: stride scheduling weighted by active tenants.

    Each partition has a pass; a fetch goes to the lowest, then to the next lowest while one
    returns nothing (stealing). Serving ``taken`` messages from a partition with ``active`` tenants
    in its rounds adds ``taken / active`` to its pass, so over time each partition gets picks in
    proportion to its active tenants: every tenant the same share, whichever partition it hashed to.
    An empty partition's pass moves as if it had one tenant and one pick, so it is probed about as
    often as a single tenant of the others is served. Passes start apart, the worker's preferred
    partition (``preferred_partition``) first, so that workers do not all start on the same one.
    """

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.passes: list[float] = []

    def order(self, count: int) -> list[int]:
        """The partitions to try, best first."""
        if len(self.passes) != count:
            first = preferred_partition(self.worker, count)
            self.passes = [((index - first) % count) * 1e-9 for index in range(count)]
        return sorted(range(count), key=self.passes.__getitem__)

    def served(self, index: int, taken: int, active: int) -> None:
        self.passes[index] += max(taken, 1) / max(active, 1)
        low = min(self.passes)
        if low > 1e6:  # keep the floats small; only differences matter
            self.passes = [value - low for value in self.passes]
