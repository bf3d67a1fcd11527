"""The quickstart app: ``dramatiq dramatiq_fairway.quickstart`` (or ``dramatiq examples.quickstart``,
whose file is also the producer: ``python examples/quickstart.py``).

One actor that does real work (counts primes in a range with a sieve) and tallies what it did in
the state store, so a producer can see every job finish on any broker.
"""

from __future__ import annotations

import math

import dramatiq

from . import setup
from .connections import state_store_client
from .settings import Settings, load_settings

QUEUE = "quickstart"
TALLY_TTL = 86_400

settings = load_settings()
broker = setup(settings)
state_store = state_store_client(settings)


def count_primes_between(low: int, high: int) -> int:
    """How many primes p satisfy low <= p < high (segmented sieve of Eratosthenes)."""
    if high <= 2:
        return 0
    low = max(low, 2)
    segment = bytearray([1]) * (high - low)
    for p in range(2, math.isqrt(high - 1) + 1):
        start = max(p * p, -(-low // p) * p)
        segment[start - low :: p] = bytes(len(range(start, high, p)))
    return sum(segment)


def tally_key(settings: Settings, run_id: str) -> str:
    return f"{settings.namespace}:quickstart:{run_id}"


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
