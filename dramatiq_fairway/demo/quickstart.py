"""The quickstart app: ``dramatiq dramatiq_fairway.demo.quickstart`` (or ``dramatiq examples.quickstart``,
whose file is also the producer: ``python examples/quickstart.py``).

One actor that does real work (counts primes in a range with a sieve) and tallies what it did in
the state store, so a producer can see every job finish on any broker.
"""

from __future__ import annotations

import dramatiq

from .. import setup
from ..connections import state_store_client
from ..settings import load_settings
from .prime_tally import TALLY_TTL, count_primes_between, tally_key

QUEUE = "quickstart"

__all__ = ["QUEUE", "broker", "count_primes", "count_primes_between", "settings", "state_store", "tally_key"]

# At import, as a dramatiq app must: importing this module sets up the global broker (the
# embedded Redis by default). Code that only needs the arithmetic imports prime_tally.
settings = load_settings()
broker = setup(settings)
state_store = state_store_client(settings)


@dramatiq.actor(queue_name=QUEUE, max_retries=3)
def count_primes(low: int, high: int, run_id: str) -> None:
    """Count the primes in [low, high) and add the result to the run's tally."""
    found = count_primes_between(low, high)
    key = tally_key(settings, run_id)
    pipeline = state_store.pipeline()
    pipeline.hincrby(key, "done", 1)
    pipeline.hincrby(key, "primes", found)
    pipeline.expire(key, TALLY_TTL)
    pipeline.execute()
