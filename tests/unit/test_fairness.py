"""FairPriority without a server; validation and capacity on real brokers are in tests/middlewares/test_fairness.py."""

from __future__ import annotations

from dramatiq_fairway.middlewares.fairness import FairPriority


def test_constructible_without_arguments() -> None:
    assert FairPriority().actor_options == {"priority_level", "tenant", "tenant_from"}
