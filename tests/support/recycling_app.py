"""A worker module for ``dramatiq tests.support.recycling_app``: the fairway stack from FAIRWAY_*
settings (with FAIRWAY_WORKERS__* limits), for the worker recycling acceptance tests.

``FAIRWAY_TEST_QUEUE`` names the queue. ``record`` pushes ``"<message id> <pid> <start ms>"`` to
``{namespace}:test:runs`` (on this host's clock); ``hog`` keeps
``megabytes`` of memory resident for the rest of the process's life, then records like ``record``.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.middleware import CurrentMessage

from dramatiq_fairway import setup
from dramatiq_fairway.connections import state_store_client
from dramatiq_fairway.settings import load_settings

settings = load_settings()
broker = setup(settings)
broker.add_middleware(CurrentMessage())
state = state_store_client(settings)  # a Sentinel or cluster URL too (FAIRWAY_TEST_REDIS)
RUNS = f"{settings.namespace}:test:runs"
_kept: list[bytearray] = []


@dramatiq.actor(queue_name=os.environ["FAIRWAY_TEST_QUEUE"], max_retries=0)
def record() -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    state.rpush(RUNS, f"{message.message_id} {os.getpid()} {time.time() * 1000:.0f}")
    time.sleep(0.005)


@dramatiq.actor(queue_name=os.environ["FAIRWAY_TEST_QUEUE"], max_retries=0)
def hog(megabytes: int) -> None:
    # Written, so that the pages are resident, not merely reserved.
    _kept.append(bytearray(b"x" * (megabytes * 2**20)))
    record.fn()
