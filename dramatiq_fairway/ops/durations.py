"""Durations as operators type them (``30s``, ``15m``, ``2h``, ``7d``): for the CLI and the dashboard."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

# Longer durations reach back before any dead letter or job could exist and, subtracted from now,
# before year 1, where datetime overflows: refused with a clear message instead.
LONGEST = timedelta(days=365 * 100)


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``2h`` or ``7d`` (decimals allowed) as a timedelta, at most ``LONGEST``.

    Raises ``ValueError`` with a one-line message quoting ``text``.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 2h or 7d")
    amount = float(match.group(1))
    if amount > LONGEST / timedelta(**{_UNITS[match.group(2)]: 1}):
        raise ValueError(f"{text!r} is longer than {LONGEST.days // 365} years")
    return timedelta(**{_UNITS[match.group(2)]: amount})
