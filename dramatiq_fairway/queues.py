"""The old path of :func:`queue_depths` (docs/fairness.md names it), kept working: the operator API
lives in :mod:`dramatiq_fairway.ops.queues`."""

from __future__ import annotations

from .ops.queues import QueueDepth, UnsupportedBroker, queue_depths

__all__ = ["QueueDepth", "UnsupportedBroker", "queue_depths"]
