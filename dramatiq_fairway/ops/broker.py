"""The broker the operator commands and the dashboard talk to, opened from the settings.

The CLI and the dashboard open brokers only here, so that what they may do with one (count,
pause, enqueue) is decided in ``ops/`` and not in each command.
"""

from __future__ import annotations

from dramatiq import Broker

from ..brokers import build_broker
from ..settings import Settings
from ..setup import install


def open_broker(settings: Settings) -> Broker:
    """The configured broker without fairway's middleware: enough to count, pause and resume queues."""
    return build_broker(settings)


def open_stacked_broker(settings: Settings) -> Broker:
    """The configured broker with fairway's middleware, for enqueueing as workers' producers do
    (job status, fairness checks at enqueue); unlike ``setup`` it leaves the global broker alone."""
    return install(build_broker(settings), settings)
