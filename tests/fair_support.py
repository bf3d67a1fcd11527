"""Building and cleaning up a FairRedisBroker in tests and in tests/fair_app.py."""

from __future__ import annotations

import redis

import dramatiq_fairway
from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.connections import redis_client
from dramatiq_fairway.middlewares.fairness import FairPriority
from dramatiq_fairway.settings import Settings


def fair_broker(settings: Settings) -> FairRedisBroker:
    """A FairRedisBroker on ``settings`` with the fairway stack (FairPriority included)."""
    broker = FairRedisBroker(
        client=redis_client(settings.redis_url, settings.tls), namespace=settings.namespace, settings=settings
    )
    dramatiq_fairway.install(broker, settings)
    if not any(isinstance(middleware, FairPriority) for middleware in broker.middleware):
        broker.add_middleware(FairPriority(settings=settings))
    return broker


def delete_namespace(client: redis.Redis, namespace: str) -> None:
    """Delete every key of ``namespace``, the broker's hash-tagged ones included (tests only)."""
    for pattern in (f"{namespace}:*", "{" + namespace + ":*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
