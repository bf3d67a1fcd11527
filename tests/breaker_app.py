"""A worker module for ``dramatiq tests.breaker_app``: the fairway stack from ``setup()`` and one
actor, ``call_dependency``, that calls an HTTP dependency.

``FAIRWAY_TEST_QUEUE`` names the queue, ``FAIRWAY_TEST_BREAKER`` the actor's breaker,
``FAIRWAY_TEST_URL`` the dependency. A 503 answer raises
``TransientError``, a 429 ``RateLimited(Retry-After)``; a job that got a 200 adds its number to the
set ``{namespace}:test:done`` in the state store.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import dramatiq
import redis

from dramatiq_fairway import setup
from dramatiq_fairway.errors import RateLimited, TransientError
from dramatiq_fairway.settings import load_settings

settings = load_settings()
broker = setup(settings)
state = redis.Redis.from_url(settings.state_url or settings.redis_url)
DONE_KEY = f"{settings.namespace}:test:done"


@dramatiq.actor(
    queue_name=os.environ["FAIRWAY_TEST_QUEUE"],
    breaker=os.environ["FAIRWAY_TEST_BREAKER"],
    max_retries=1000,
    min_backoff=100,
    max_backoff=1000,
)
def call_dependency(n: int) -> None:
    try:
        with urllib.request.urlopen(f"{os.environ['FAIRWAY_TEST_URL']}?job={n}", timeout=30) as response:
            response.read()
    except urllib.error.HTTPError as error:
        if error.code == 429:
            raise RateLimited(float(error.headers["Retry-After"])) from None
        raise TransientError(f"dependency answered {error.code}") from None
    state.sadd(DONE_KEY, n)
