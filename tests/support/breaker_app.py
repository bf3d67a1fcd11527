"""A worker module for ``dramatiq tests.support.breaker_app``: the fairway stack from ``setup()`` and one
actor, ``call_dependency``, that calls an HTTP dependency.

``FAIRWAY_TEST_QUEUE`` names the queue, ``FAIRWAY_TEST_BREAKER`` the actor's breaker,
``FAIRWAY_TEST_URL`` the dependency. A 503 answer raises
``TransientError``, a 429 ``RateLimited(Retry-After)``; a job that got a 200 adds its number to the
set ``{namespace}:test:done`` in the state store. Its Callbacks count what they see: each success
puts the job's number and the retries it used in the hash ``{namespace}:test:succeeded``, each
failed attempt increments ``{namespace}:test:failed``.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any

import dramatiq

from dramatiq_fairway import setup
from dramatiq_fairway.connections import state_store_client
from dramatiq_fairway.errors import RateLimited, TransientError
from dramatiq_fairway.settings import load_settings

settings = load_settings()
broker = setup(settings)
state = state_store_client(settings)  # a Sentinel or cluster URL too (FAIRWAY_TEST_REDIS)
DONE_KEY = f"{settings.namespace}:test:done"
SUCCEEDED_KEY = f"{settings.namespace}:test:succeeded"
FAILED_KEY = f"{settings.namespace}:test:failed"
QUEUE = os.environ["FAIRWAY_TEST_QUEUE"]


@dramatiq.actor(queue_name=QUEUE)
def record_success(message_data: dict[str, Any], result: Any) -> None:
    state.hset(SUCCEEDED_KEY, message_data["args"][0], message_data["options"].get("retries", 0))


@dramatiq.actor(queue_name=QUEUE)
def record_failure(message_data: dict[str, Any], exception_data: dict[str, Any]) -> None:
    state.incr(FAILED_KEY)


@dramatiq.actor(
    queue_name=QUEUE,
    breaker=os.environ["FAIRWAY_TEST_BREAKER"],
    on_success="record_success",
    on_failure="record_failure",
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
