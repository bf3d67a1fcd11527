"""Paused queues in the state store, for brokers without their own pause (RabbitMQ).

Key (``{namespace}`` is ``FAIRWAY_NAMESPACE``): ``{namespace}:paused``, the set of paused queue
names, without TTL (a queue stays paused until resumed). ``FairRedisBroker`` keeps its own flag
in the broker's Redis instead (``brokers/fair_redis.lua``).
"""

from __future__ import annotations

import redis
from dramatiq.common import q_name
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..connections import state_store_client
from ..settings import Settings


def paused_key(namespace: str) -> str:
    return f"{namespace}:paused"


class PausedQueues:
    """The state-store set of paused queue names (for brokers without their own pause)."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.key = paused_key(namespace)

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
