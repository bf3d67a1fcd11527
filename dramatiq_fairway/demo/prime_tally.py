"""The quickstart's work, free of side effects: counting primes in a range, and where a run's tally lives.

``dramatiq_fairway.demo.quickstart`` (the app) sets up a broker when imported; tests and tools that only
need these import this module.
"""

from __future__ import annotations

import math

from ..settings import Settings
from ..store.keys import quickstart_tally_key

TALLY_TTL = 86_400


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
    return quickstart_tally_key(settings.namespace, run_id)
