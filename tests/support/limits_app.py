"""A worker module for ``dramatiq tests.support.limits_app``: the fairway stack from FAIRWAY_* settings
with the consumer-side TenantLimiter (a no-op on Redis), for the limits acceptance tests.

``FAIRWAY_TEST_QUEUE`` names the queue. ``job`` records, in the state store under
``{namespace}:test:``, each start as ``[server ms, jobs of its tenant running, pid]`` in
``starts:<tenant>`` and each end in ``done`` as ``"<tenant>:<index>"``. With ``first_seconds`` it
sleeps that long only on its first run (so a job recovered from a killed worker runs short).
"""

from __future__ import annotations

import os
import time

import dramatiq

from dramatiq_fairway import setup
from dramatiq_fairway.connections import state_store_client
from dramatiq_fairway.middlewares.limits import TenantLimiter
from dramatiq_fairway.settings import load_settings

settings = load_settings()
broker = setup(settings)
if not any(isinstance(middleware, TenantLimiter) for middleware in broker.middleware):
    broker.add_middleware(TenantLimiter(settings=settings))
state = state_store_client(settings)  # a Sentinel or cluster URL too (FAIRWAY_TEST_REDIS)
PREFIX = f"{settings.namespace}:test:"

# Count the tenant's running jobs and record the start, atomically, on the server's clock.
ENTER = state.register_script(
    """
    local running = redis.call('INCR', KEYS[1])
    local t = redis.call('TIME')
    local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('RPUSH', KEYS[2], cjson.encode({ms, running, tonumber(ARGV[1])}))
    return running
    """
)


@dramatiq.actor(queue_name=os.environ["FAIRWAY_TEST_QUEUE"], max_retries=3)
def job(tenant: str, index: int, seconds: float = 0.05, first_seconds: float = 0.0) -> None:
    ENTER(keys=[PREFIX + f"running:{tenant}", PREFIX + f"starts:{tenant}"], args=[os.getpid()])
    try:
        first = state.set(PREFIX + f"ran:{tenant}:{index}", 1, nx=True)
        time.sleep(first_seconds if first and first_seconds else seconds)
    finally:
        state.decr(PREFIX + f"running:{tenant}")
    state.rpush(PREFIX + "done", f"{tenant}:{index}")
