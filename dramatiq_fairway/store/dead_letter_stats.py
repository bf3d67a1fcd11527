"""Rows of ``dlq stats`` (``DeadLetterStats``, ``Bucket``), built from what ``DeadLetterStore.stats`` read.

Either the stats script's hourly counters (:func:`rows_from_counters`) or, for buckets narrower
than an hour, the failure times in each value's index (:func:`rows_from_index`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

# Trend counters are kept per hour; wider buckets are sums of them, narrower ones are read from
# the index of each value.
COUNTER_BUCKET = timedelta(hours=1)


# A dataclass, not a model: ``stats`` builds one per value and hour (30,000 for a week of hourly
# trends of 200 fingerprints), and a slotted dataclass costs a fraction of a model to build.
@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    count: int


class DeadLetterStats(BaseModel):
    """One row of ``dlq stats``: the records sharing one value of the chosen dimension."""

    key: str
    count: int
    first_seen: datetime
    last_seen: datetime
    buckets: list[Bucket]


def bucketed(counts: Iterable[tuple[int, int]], width: int) -> list[Bucket]:
    """(epoch second, count) pairs summed into buckets ``width`` seconds wide, oldest first."""
    totals: dict[int, int] = {}
    for second, count in counts:
        if count > 0:
            start = second // width * width
            totals[start] = totals.get(start, 0) + count
    return [Bucket(start=datetime.fromtimestamp(start, UTC), count=n) for start, n in sorted(totals.items())]


def trend(
    first_day: int,
    counters: bytes,
    first_second: int,
    width: int,
    starts: dict[tuple[int, int], list[datetime]],
) -> list[Bucket]:
    """Buckets ``width`` seconds wide from the stats script's hourly day counters, from ``first_second`` on.

    ``starts`` caches each counter's start time across the values of one answer: they mostly cover
    the same days, and making the datetimes once per answer instead of once per value and hour is
    what keeps a week of hourly trends for hundreds of values fast.
    """
    hour = int(COUNTER_BUCKET.total_seconds())
    day_start = first_day * 86_400
    counts = struct.unpack(f">{len(counters) // 4}I", counters)
    skip = max(0, (first_second - day_start) // hour)
    if width != hour:
        return bucketed(((day_start + slot * hour, n) for slot, n in enumerate(counts[skip:], start=skip)), width)
    moments = starts.get((first_day, len(counts)))
    if moments is None:
        moments = [datetime.fromtimestamp(day_start + slot * hour, UTC) for slot in range(len(counts))]
        starts[first_day, len(counts)] = moments
    return [Bucket(start=moments[slot], count=n) for slot, n in enumerate(counts[skip:], start=skip) if n]


def rows_from_counters(reply: Sequence[Any], first_second: int, width: int) -> list[DeadLetterStats]:
    """Rows from the stats script's reply (six items per value), buckets from ``first_second`` on."""
    starts: dict[tuple[int, int], list[datetime]] = {}
    rows = []
    for position in range(0, len(reply), 6):
        value, count, first, last, first_day, counters = reply[position : position + 6]
        rows.append(
            DeadLetterStats(
                key=value.decode(),
                count=count,
                first_seen=_from_ms(int(first)),
                last_seen=_from_ms(int(last)),
                buckets=trend(first_day, counters, first_second, width, starts),
            )
        )
    return rows


def rows_from_index(
    values: Iterable[str], spreads: Iterable[list[tuple[bytes, float]]], width: int
) -> list[DeadLetterStats]:
    """Rows from each value's (member, failed-at ms) index entries, oldest first; values without any are left out."""
    rows = []
    for value, spread in zip(values, spreads, strict=True):
        if spread:
            rows.append(
                DeadLetterStats(
                    key=value,
                    count=len(spread),
                    first_seen=_from_ms(spread[0][1]),
                    last_seen=_from_ms(spread[-1][1]),
                    buckets=bucketed(((int(score) // 1000, 1) for _member, score in spread), width),
                )
            )
    return rows


def _from_ms(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
