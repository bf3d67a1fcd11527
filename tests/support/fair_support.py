"""Building and cleaning up a FairRedisBroker in tests and in tests/support/fair_app.py."""

from __future__ import annotations

import redis

import dramatiq_fairway
from dramatiq_fairway.brokers import build_broker
from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.settings import Settings


def fair_broker(settings: Settings) -> FairRedisBroker:
    """The FairRedisBroker ``setup()`` would build for ``settings``, with the fairway stack, not made global."""
    broker = build_broker(settings)
    assert isinstance(broker, FairRedisBroker)
    dramatiq_fairway.install(broker, settings)
    return broker


def delete_namespace(client: redis.Redis, namespace: str) -> None:
    """Delete every key of ``namespace``, the broker's hash-tagged ones included (tests only)."""
    for pattern in (f"{namespace}:*", "{" + namespace + ":*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
