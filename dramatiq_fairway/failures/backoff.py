"""Retry delays: the backoff strategies and ``Retry-After`` parsing. Times are milliseconds,
as in Dramatiq's ``min_backoff``/``max_backoff``, except ``Retry-After`` (seconds, as on the wire).

For the ``n``-th retry (``n`` ≥ 1), with ``lo = min_backoff`` and ``hi = max_backoff``:

- ``fixed``: ``lo``;
- ``exponential``: ``min(hi, lo · 2^(n-1))``;
- ``full_jitter`` (default; AWS "Exponential Backoff and Jitter"): uniform in
  ``[lo, min(hi, lo · 2^n)]``: the jitter spreads a burst of failures over the whole window, and
  ``lo`` stays a floor, as Dramatiq users expect of ``min_backoff``;
- ``decorrelated_jitter``: ``min(hi, uniform(lo, 3 · previous))``, ``previous`` being the last
  delay (``lo`` before the first retry).
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal, get_args

BackoffStrategy = Literal["full_jitter", "decorrelated_jitter", "exponential", "fixed"]
BACKOFF_STRATEGIES: frozenset[str] = frozenset(get_args(BackoffStrategy))
DEFAULT_BACKOFF: BackoffStrategy = "full_jitter"

# Dramatiq's defaults, so that actors moved over from stock Retries behave the same.
DEFAULT_MIN_BACKOFF = 15_000
DEFAULT_MAX_BACKOFF = 7 * 86_400_000

# 2**62 ms is far beyond any max_backoff; capping the exponent keeps the arithmetic in floats' range.
_MAX_EXPONENT = 62

_default_rng = random.Random()


def compute_backoff(
    strategy: str,
    retries: int,
    *,
    min_backoff: int = DEFAULT_MIN_BACKOFF,
    max_backoff: int = DEFAULT_MAX_BACKOFF,
    previous: int | None = None,
    rng: random.Random | None = None,
) -> int:
    """The delay in ms before retry number ``retries`` (1 for the first retry)."""
    if strategy not in BACKOFF_STRATEGIES:
        raise ValueError(f"backoff must be one of {', '.join(sorted(BACKOFF_STRATEGIES))}, got {strategy!r}")
    rng = rng or _default_rng
    high = max(0, max_backoff)
    low = min(max(0, min_backoff), high)
    exponent = min(max(retries, 1), _MAX_EXPONENT)
    if strategy == "fixed":
        delay: float = low
    elif strategy == "exponential":
        delay = min(high, low * 2 ** (exponent - 1))
    elif strategy == "full_jitter":
        delay = rng.uniform(low, min(high, low * 2**exponent))
    else:
        last = previous if previous is not None and previous > 0 else low
        delay = min(high, rng.uniform(low, max(low, 3 * last)))
    return round(delay)


def parse_retry_after(value: str | float | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date; None if unreadable.

    A date in the past means "now" (0), and so does a negative number; NaN and infinity are unreadable.
    """
    if value is None:
        return None
    if isinstance(value, int | float):
        return max(0.0, float(value)) if math.isfinite(value) else None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
