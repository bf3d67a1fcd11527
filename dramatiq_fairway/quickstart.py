"""The old path of the quickstart app (``dramatiq dramatiq_fairway.quickstart``), kept working:
the app lives in :mod:`dramatiq_fairway.demo.quickstart`. Importing this sets up the broker, as that does."""

from __future__ import annotations

from .demo.quickstart import QUEUE, broker, count_primes, count_primes_between, settings, state_store, tally_key

__all__ = ["QUEUE", "broker", "count_primes", "count_primes_between", "settings", "state_store", "tally_key"]
