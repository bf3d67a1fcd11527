"""The chaos worker app with a short delay horizon, for tests/chaos/test_long_delay.py:
``dramatiq tests.support.long_delay_app:worker_app`` with ``LONG_DELAY_HORIZON_MS`` set."""

from __future__ import annotations

import os

import dramatiq

from dramatiq_fairway.brokers.rabbitmq import FairRabbitmqBroker
from dramatiq_fairway.brokers.rabbitmq_delay import ParkQueues

from .chaos_support import worker_app as chaos_worker_app

HORIZON_ENV = "LONG_DELAY_HORIZON_MS"
WORKER_APP = "tests.support.long_delay_app:worker_app"


def worker_app() -> None:
    chaos_worker_app()
    broker = dramatiq.get_broker()
    assert isinstance(broker, FairRabbitmqBroker)
    broker.park_queues = ParkQueues(int(os.environ[HORIZON_ENV]), broker.layout)
