"""The dead-letter trend: bars computed here, drawn as inline SVG by the template (no chart library)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..store.dead_letters import Bucket

WIDTH = 120
HEIGHT = 24
HOURS = 24


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


def trend_bars(buckets: list[Bucket], *, now: datetime | None = None, hours: int = HOURS) -> list[Bar]:
    """One bar per hour of the last ``hours`` hours (oldest left), scaled to the busiest hour."""
    end = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    starts = [end - timedelta(hours=hours - 1 - slot) for slot in range(hours)]
    counts = {bucket.start: bucket.count for bucket in buckets}
    top = max((counts.get(start, 0) for start in starts), default=0) or 1
    slot_width = WIDTH / hours
    bars = []
    for slot, start in enumerate(starts):
        count = counts.get(start, 0)
        height = max(1.0, HEIGHT * count / top) if count else 0.0
        title = f"{start:%Y-%m-%d %H:00} UTC: {count}"
        bars.append(Bar(x=slot * slot_width, y=HEIGHT - height, width=slot_width - 1, height=height, title=title))
    return bars
