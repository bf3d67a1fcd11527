"""The last hours of work, read from the per-minute history buckets (``store/history.py``): the one
API behind ``fairway stats``, the dashboard's figures and charts, and its ``/api/`` twins.

Every figure is summed over the buckets of the minutes asked for, whichever worker host wrote
them, so it survives a restart of the reader and sees every host. Percentiles come from the
coarse histograms (interpolated inside a bucket, as Prometheus does): close, not exact.
``failure_ratio`` is the share of finished attempts that failed (retried, dead-lettered or
failed without a record).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel

from ..connections import state_store_client
from ..settings import Settings
from ..store.history import BOUNDS_MS, KINDS, OUTCOMES, PER_QUEUE, TOTALS, HistoryStore

Grouping = Literal["queue", "actor", "tenant", "level"]
GROUPINGS: tuple[Grouping, ...] = ("queue", "actor", "tenant", "level")
# The history is kept 24 h (store/history.TTL); a longer window would read only empty buckets.
LONGEST = timedelta(hours=24)
# The buckets each grouping reads: by actor there is no tenant or level to read.
_KINDS_BY: dict[Grouping, tuple[str, ...]] = {
    "queue": ("o", "t", "r", "w"),
    "actor": ("o", "r"),
    "tenant": ("t",),
    "level": ("w",),
}
# The maintenance job samples the backlog once a minute: a sample older than this is no backlog now.
SAMPLED_WITHIN = timedelta(minutes=3)


class StatsRow(BaseModel):
    """One row of ``fairway stats --json``; a figure the grouping cannot have is null (docs/design.md)."""

    key: str
    success: int | None = None
    retried: int | None = None
    dead_lettered: int | None = None
    failed: int | None = None
    finished: int | None = None
    per_minute: float | None = None
    failure_ratio: float | None = None
    served: int | None = None
    wait_p50: float | None = None
    wait_p95: float | None = None
    wait_p99: float | None = None
    runtime_p50: float | None = None
    runtime_p95: float | None = None
    runtime_p99: float | None = None
    backlog: int | None = None


@dataclass
class Histogram:
    """Counts per bucket of ``BOUNDS_MS`` (the last bucket is everything above), summed over minutes."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS_MS) + 1))
    total_ms: int = 0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def add(self, suffix: str, value: int) -> None:
        if suffix == "s":
            self.total_ms += value
        elif suffix.startswith("h"):
            index = int(suffix[1:])
            if 0 <= index < len(self.counts):
                self.counts[index] += value

    def merge(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total_ms += other.total_ms

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in seconds; None without observations."""
        total = self.count
        if not total:
            return None
        rank, below = q * total, 0
        for index, count in enumerate(self.counts):
            if count and below + count >= rank:
                lower = BOUNDS_MS[index - 1] if index else 0
                if index == len(BOUNDS_MS):
                    return lower / 1000
                return (lower + (BOUNDS_MS[index] - lower) * (rank - below) / count) / 1000
            below += count
        return BOUNDS_MS[-1] / 1000


@dataclass
class Minute:
    """One minute's buckets, parsed: counts by (queue, actor, outcome) and so on."""

    minute: int
    outcomes: dict[tuple[str, str, str], int] = field(default_factory=dict)
    served: dict[tuple[str, str], int] = field(default_factory=dict)
    runtimes: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    waits: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    backlog: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self.minute * 60, UTC)

    @property
    def empty(self) -> bool:
        return not (self.outcomes or self.served or self.runtimes or self.waits or self.backlog)


class History:
    """Reads the history buckets of one namespace. ``clock``: Unix seconds (tests move it)."""

    def __init__(self, store: HistoryStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> History:
        return cls(HistoryStore(state_store_client(settings), settings.namespace))

    def minutes(self, since: timedelta, kinds: Iterable[str] = KINDS) -> list[Minute]:
        """The minutes of the last ``since`` (the current one included), oldest first, with the
        ``kinds`` of buckets read (``o`` outcomes, ``t`` tenants, ``r`` run times, ``w`` waits, ``b`` backlog)."""
        numbers = self._numbers(since)
        minutes = [Minute(number) for number in numbers]
        for kind in kinds:
            for minute, fields in zip(minutes, self.store.read(kind, numbers), strict=True):
                _parse(kind, fields, minute)
        return minutes

    def totals(self, since: timedelta) -> list[Minute]:
        """The minutes of the last ``since`` summed over every queue (queue and actor ``*``): outcomes,
        waits and backlog per level. What the overview draws; a few dozen fields per minute."""
        numbers = self._numbers(since)
        minutes = [Minute(number) for number in numbers]
        for minute, fields in zip(minutes, self.store.read(TOTALS, numbers), strict=True):
            for name, value in fields.items():
                kind, _, rest = name.partition("|")
                _parse(kind, {f"*|*|{rest}" if kind == "o" else f"*|{rest}": value}, minute)
        return minutes

    def window(self, since: timedelta, kinds: Sequence[str] = ("o", "t", "r", "w")) -> Minute:
        """The ``kinds`` of buckets of the last ``since`` summed on the server into one :class:`Minute`
        (its ``minute`` is the newest one's)."""
        numbers = self._numbers(since)
        window = Minute(numbers[-1])
        for kind, fields in zip(kinds, self.store.sums(kinds, numbers), strict=True):
            _parse(kind, fields, window)
        return window

    def _numbers(self, since: timedelta) -> list[int]:
        if since <= timedelta(0) or since > LONGEST:
            raise ValueError(f"since: {since} is not between 1 minute and {LONGEST.total_seconds() / 3600:.0f} h")
        now = int(self.clock() // 60)
        count = max(1, round(since.total_seconds() / 60))
        return list(range(now - count + 1, now + 1))

    def stats(self, since: timedelta, *, by: Grouping = "queue", queue: str | None = None) -> list[StatsRow]:
        """Throughput, failure ratio, wait and run-time percentiles over ``since``, one row per ``by`` value."""
        if by not in GROUPINGS:
            raise ValueError(f"by: {by!r} is not one of {', '.join(GROUPINGS)}")
        window = self.window(since, kinds=_KINDS_BY[by])
        rows: dict[str, _Totals] = {}

        def totals(key: str) -> _Totals:
            return rows.setdefault(key, _Totals())

        for (q, actor, outcome), count in window.outcomes.items():
            if queue in (None, q) and by in ("queue", "actor"):
                totals(q if by == "queue" else actor).add_outcome(outcome, count)
        for (q, tenant), count in window.served.items():
            if queue in (None, q) and by in ("queue", "tenant"):
                totals(q if by == "queue" else tenant).add_served(count)
        for (q, actor), histogram in window.runtimes.items():
            if queue in (None, q) and by in ("queue", "actor"):
                totals(q if by == "queue" else actor).runtime.merge(histogram)
        for (q, level), histogram in window.waits.items():
            if queue in (None, q) and by in ("queue", "level"):
                totals(q if by == "queue" else level).wait.merge(histogram)
        if by in ("queue", "level"):
            # The backlog is a gauge: the newest sample (taken once a minute), not a sum over the window.
            recent = self.minutes(min(since, SAMPLED_WITHIN), kinds=("b",))
            sampled = next((minute.backlog for minute in reversed(recent) if minute.backlog), {})
            for (q, level), depth in sampled.items():
                if queue in (None, q):
                    totals(q if by == "queue" else level).add_backlog(depth)
        return [rows[key].row(key, by, len(self._numbers(since))) for key in sorted(rows)]

    def throughput(self, minutes: int, *, queue: str | None = None) -> list[dict[str, object]]:
        """Per minute and queue: jobs by outcome and the wait p50/p95 (s); the ``/api/throughput`` rows."""
        numbers = self._numbers(timedelta(minutes=minutes))
        result: list[dict[str, object]] = []
        for number, fields in zip(numbers, self.store.read(PER_QUEUE, numbers), strict=True):
            counts: dict[str, dict[str, int]] = {}
            waits: dict[str, Histogram] = {}
            for name, value in fields.items():
                q, _, rest = name.partition("|")
                if queue not in (None, q):
                    continue
                kind, _, suffix = rest.partition("|")
                if kind == "o":
                    row = counts.setdefault(q, dict.fromkeys(OUTCOMES, 0))
                    row[suffix] = row.get(suffix, 0) + value
                else:
                    waits.setdefault(q, Histogram()).add(suffix, value)
            start = Minute(number).start.isoformat().replace("+00:00", "Z")
            for q in sorted(set(counts) | set(waits)):
                wait = waits.get(q, Histogram())
                outcomes = counts.get(q, dict.fromkeys(OUTCOMES, 0))
                result.append(
                    {
                        "minute": start,
                        "queue": q,
                        **outcomes,
                        "wait_p50": wait.quantile(0.5),
                        "wait_p95": wait.quantile(0.95),
                    }
                )
        return result

    def served(self, since: timedelta) -> dict[tuple[str, str], int]:
        """Jobs run per (queue, tenant) over ``since``."""
        return self.window(since, kinds=("t",)).served


@dataclass
class _Totals:
    outcomes: dict[str, int] | None = None
    served: int | None = None
    backlog: int | None = None
    runtime: Histogram = field(default_factory=Histogram)
    wait: Histogram = field(default_factory=Histogram)

    def add_outcome(self, outcome: str, count: int) -> None:
        if self.outcomes is None:
            self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count

    def add_served(self, count: int) -> None:
        self.served = (self.served or 0) + count

    def add_backlog(self, depth: int) -> None:
        self.backlog = (self.backlog or 0) + depth

    def row(self, key: str, by: Grouping, minutes: int) -> StatsRow:
        row = StatsRow(key=key, served=self.served, backlog=self.backlog)
        if by in ("queue", "actor"):
            outcomes = self.outcomes or dict.fromkeys(OUTCOMES, 0)
            finished = sum(outcomes.values())
            failures = finished - outcomes.get("success", 0)
            row.success, row.retried = outcomes.get("success", 0), outcomes.get("retried", 0)
            row.dead_lettered, row.failed = outcomes.get("dead_lettered", 0), outcomes.get("failed", 0)
            row.finished = finished
            row.per_minute = round(finished / minutes, 3)
            row.failure_ratio = round(failures / finished, 4) if finished else None
            row.runtime_p50, row.runtime_p95, row.runtime_p99 = (self.runtime.quantile(q) for q in (0.5, 0.95, 0.99))
            if by == "actor" and row.served is None:
                row.served = self.runtime.count
        if by in ("queue", "level"):
            row.wait_p50, row.wait_p95, row.wait_p99 = (self.wait.quantile(q) for q in (0.5, 0.95, 0.99))
        return row


def _parse(kind: str, fields: dict[str, int], minute: Minute) -> None:
    for name, value in fields.items():
        queue, _, rest = name.partition("|")
        if kind == "t":
            minute.served[(queue, rest)] = value
        elif kind == "b":
            minute.backlog[(queue, rest)] = value
        else:
            middle, _, suffix = rest.rpartition("|")
            if kind == "o":
                minute.outcomes[(queue, middle, suffix)] = value
            else:
                histograms = minute.runtimes if kind == "r" else minute.waits
                histogram = histograms.get((queue, middle))
                if histogram is None:
                    histogram = histograms[(queue, middle)] = Histogram()
                histogram.add(suffix, value)
