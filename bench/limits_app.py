"""The worker app of bench/limits.py: tenant A capped at 2 concurrent jobs, three ways.

``BENCH_MODE``:
  ``fairway``  FairRedisBroker (or FairwayRabbitmqBroker with ``TenantLimiter``) from ``FAIRWAY_*``
               with Dramatiq's default middleware only, so the cost measured is the limits' own;
               the cap comes from ``FAIRWAY_LIMITS__TENANTS``.
  ``stock``    Dramatiq's RedisBroker, default middleware, and a ``ConcurrentRateLimiter`` (limit 2)
               around A's jobs: a job that finds no slot raises ``RateLimitExceeded`` and is retried.
Jobs record attempts, how many A jobs ran at once and completions in the stats Redis
(``BENCH_STATS_URL``, not the one measured), under ``bench:limits:``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
import redis
from dramatiq import Broker, Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.rate_limits import ConcurrentRateLimiter
from dramatiq.rate_limits.backends import RedisBackend

from dramatiq_fairway.brokers import build_broker
from dramatiq_fairway.middlewares.limits import TenantLimiter
from dramatiq_fairway.settings import load_settings

MODE = os.environ.get("BENCH_MODE", "fairway")
QUEUE = os.environ.get("BENCH_QUEUE", "bench_limits")
STATS = "bench:limits:"
stats = redis.Redis.from_url(os.environ.get("BENCH_STATS_URL", "redis://127.0.0.1:6379/0"))
settings = load_settings()


class CountingLimiter(TenantLimiter):
    """TenantLimiter that also counts the messages it holds back (the RabbitMQ cost)."""

    def hold(self, broker: Broker, message: Message[Any]) -> int | None:
        delay = super().hold(broker, message)
        if delay:
            stats.incr(STATS + "held")
        return delay


mutex: ConcurrentRateLimiter | None = None
if MODE == "stock":
    broker: Broker = RedisBroker(url=settings.redis_url)
    mutex = ConcurrentRateLimiter(RedisBackend(url=settings.redis_url), "bench-a", limit=2)
else:
    broker = build_broker(settings)
    if settings.broker == "rabbitmq":
        broker.add_middleware(CountingLimiter(settings=settings))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=10_000, min_backoff=100, max_backoff=1000)
def work(tenant: str, seconds: float) -> None:
    stats.incr(STATS + f"attempts:{tenant}")
    if mutex is not None and tenant == "a":
        with mutex.acquire():
            run(tenant, seconds)
    else:
        run(tenant, seconds)


def run(tenant: str, seconds: float) -> None:
    running = stats.incr(STATS + f"running:{tenant}")
    stats.rpush(STATS + f"peaks:{tenant}", running)
    time.sleep(seconds)
    stats.decr(STATS + f"running:{tenant}")
    stats.incr(STATS + "done")
