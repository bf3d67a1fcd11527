"""A worker module for ``dramatiq tests.support.fair_app``: a FairRedisBroker built from FAIRWAY_* settings.

``FAIRWAY_TEST_QUEUE`` names the queue. The actor records ``[pid, value]`` in
``{namespace}:test:ran`` when it starts, then sleeps ``seconds``.
"""

from __future__ import annotations

import json
import os
import time

import dramatiq

from dramatiq_fairway.settings import load_settings

from .fair_support import fair_broker

settings = load_settings()
broker = fair_broker(settings)
dramatiq.set_broker(broker)
RAN_KEY = f"{settings.namespace}:test:ran"


@dramatiq.actor(queue_name=os.environ["FAIRWAY_TEST_QUEUE"], max_retries=0)
def record(value: int, seconds: float = 0.0) -> None:
    broker.client.rpush(RAN_KEY, json.dumps([os.getpid(), value]))
    time.sleep(seconds)
