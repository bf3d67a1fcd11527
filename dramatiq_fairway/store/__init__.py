"""Fairway's shared state in Redis (the state store): the only place that knows key names."""

import itertools

import redis

from .breakers import BreakerState, BreakerStore, MemoryBreakerStore, RedisBreakerStore, StoreUnavailable

__all__ = [
    "BreakerState",
    "BreakerStore",
    "MemoryBreakerStore",
    "RedisBreakerStore",
    "StoreUnavailable",
    "delete_namespace",
]


def delete_namespace(client: redis.Redis, namespace: str) -> int:
    """Delete every key of ``namespace``: its state (``ns:*``) and, on Redis, its queues (``{ns:...}``).

    For a run that owns its namespace (the demo, the benchmarks); returns how many keys went.
    """
    deleted = 0
    for pattern in (f"{namespace}:*", f"{{{namespace}:*"):
        # Deleted as the scan goes (SCAN tolerates it): a namespace can hold a million keys.
        keys = client.scan_iter(match=pattern, count=1000)
        while batch := list(itertools.islice(keys, 500)):
            deleted += client.delete(*batch)
    return deleted
