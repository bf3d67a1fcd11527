"""Server-drawn SVG charts of the history buckets (``ops/history.py``): no chart library, no build.

Each chart is a ``<figure>`` with a heading, an SVG whose every mark has a ``<title>`` (its value
in words, shown on hover and read by screen readers), text labels on the series (never colour
alone) and a caption; an empty window draws a sentence instead. Every name that reaches the
markup (queues, actors, tenants, levels) goes through ``escape``: the result is safe ``Markup``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from ..ops.history import Histogram, Minute, StatsRow
from ..priority import Priority
from ..store.history import OUTCOMES

WIDTH = 640
HEIGHT = 180
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 62, 110, 12, 26
# Outcome colours, each also named in the legend and in every mark's title.
OUTCOME_FILLS = {"success": "#1f9d55", "retried": "#c77c02", "dead_lettered": "#d2333f", "failed": "#7a1f8f"}
SERIES_FILLS = ("#2f6fde", "#c77c02", "#1f9d55", "#d2333f", "#7a1f8f", "#6b7385")
ROW_HEIGHT = 22
TOP_ROWS = 15


@dataclass(frozen=True)
class Share:
    """A tenant's share of the jobs served and of the weights (the tenants page's rows)."""

    tenant: str
    served: int
    share: float
    weight_share: float


def throughput_chart(minutes: Sequence[Minute]) -> Markup:
    """Jobs finished per minute, one bar per minute stacked by outcome, summed over queues."""
    per_minute = []
    for minute in minutes:
        counts = dict.fromkeys(OUTCOMES, 0)
        for (_queue, _actor, outcome), count in minute.outcomes.items():
            counts[outcome] = counts.get(outcome, 0) + count
        per_minute.append((minute, counts))
    top = max((sum(counts.values()) for _, counts in per_minute), default=0)
    title = "Jobs finished per minute, by outcome"
    if not top:
        return _empty("chart-throughput", title, "no job finished in this window")
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = plot_w / len(per_minute)
    marks = []
    for index, (minute, counts) in enumerate(per_minute):
        y: float = PAD_TOP + plot_h
        for outcome in OUTCOMES:
            count = counts.get(outcome, 0)
            if not count:
                continue
            height = plot_h * count / top
            y -= height
            label = f"{minute.start:%H:%M} UTC: {count} {outcome.replace('_', ' ')}"
            marks.append(
                f'<rect x="{PAD_LEFT + index * slot:.1f}" y="{y:.1f}" width="{max(slot - 1, 1):.1f}" '
                f'height="{height:.1f}" fill="{OUTCOME_FILLS[outcome]}"><title>{escape(label)}</title></rect>'
            )
    legend = [(outcome.replace("_", " "), OUTCOME_FILLS[outcome]) for outcome in OUTCOMES]
    total = sum(sum(counts.values()) for _, counts in per_minute)
    caption = f"{total} jobs in {len(per_minute)} min; busiest minute {top}"
    return _figure("chart-throughput", title, caption, _axes(minutes, top, "jobs") + marks + _legend(legend))


def backlog_chart(minutes: Sequence[Minute]) -> Markup:
    """Messages waiting per level, as sampled once a minute by the maintenance job, summed over queues."""
    series: dict[str, list[tuple[int, int]]] = {}
    for index, minute in enumerate(minutes):
        by_level: dict[str, int] = {}
        for (_queue, level), depth in minute.backlog.items():
            by_level[level] = by_level.get(level, 0) + depth
        for level, depth in by_level.items():
            series.setdefault(level, []).append((index, depth))
    title = "Backlog per priority level"
    if not series:
        return _empty(
            "chart-backlog", title, "no backlog sample in this window (the maintenance job samples it each minute)"
        )
    top = max(depth for points in series.values() for _, depth in points) or 1
    return _lines("chart-backlog", title, minutes, series, top=top, unit="messages", what="messages waiting")


def wait_chart(minutes: Sequence[Minute]) -> Markup:
    """Wait p50 and p95 per priority level over the window, as labelled horizontal bars."""
    by_level: dict[str, Histogram] = {}
    for minute in minutes:
        for (_queue, level), histogram in minute.waits.items():
            by_level.setdefault(level, Histogram()).merge(histogram)
    rows = []
    for level in _level_order(by_level):
        p50, p95 = by_level[level].quantile(0.5), by_level[level].quantile(0.95)
        if p50 is not None and p95 is not None:
            rows.append((level, [("p50", p50), ("p95", p95)]))
    title = "Wait before start, p50 and p95 per priority level"
    if not rows:
        return _empty("chart-wait", title, "no job started in this window")
    return _bars("chart-wait", title, rows, _seconds, f"over the last {len(minutes)} min")


def tenant_share_chart(shares: Sequence[Share], queue: str) -> Markup:
    """Each tenant's share of the jobs served next to its share of the weights (top tenants)."""
    title = f"Served share against weight share, queue {queue}"
    chart_id = f"chart-tenants-{queue}"
    ranked = sorted(shares, key=lambda share: (-share.served, share.tenant))
    rows = [(share.tenant, [("served", share.share), ("weight", share.weight_share)]) for share in ranked[:TOP_ROWS]]
    if not any(share.served for share in shares):
        return _empty(chart_id, title, "no job served in this window")
    rest = len(ranked) - len(rows)
    caption = f"top {len(rows)} tenants by jobs served" + (f"; {rest} more in the table" if rest > 0 else "")
    return _bars(chart_id, title, rows, lambda value: f"{value * 100:.0f}%", caption)


def slowest_actors_chart(rows: Sequence[StatsRow]) -> Markup:
    """The actors with the highest p95 run time, with their p50 beside it."""
    ranked = sorted((row for row in rows if row.runtime_p95 is not None), key=lambda row: -(row.runtime_p95 or 0))
    bars = [(row.key, [("p50", row.runtime_p50 or 0.0), ("p95", row.runtime_p95 or 0.0)]) for row in ranked[:TOP_ROWS]]
    title = "Slowest actors by p95 run time"
    if not bars:
        return _empty("chart-actors", title, "no job ran in this window")
    return _bars("chart-actors", title, bars, _seconds, f"top {len(bars)} of {len(ranked)} actors")


def _lines(
    chart_id: str,
    title: str,
    minutes: Sequence[Minute],
    series: dict[str, list[tuple[int, int]]],
    *,
    top: int,
    unit: str,
    what: str,
) -> Markup:
    plot_w, plot_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = plot_w / max(len(minutes), 1)
    marks, legend = [], []
    for number, level in enumerate(_level_order(series)):
        fill = SERIES_FILLS[number % len(SERIES_FILLS)]
        points = [
            (PAD_LEFT + (index + 0.5) * slot, PAD_TOP + plot_h - plot_h * depth / top, index, depth)
            for index, depth in series[level]
        ]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        marks.append(f'<polyline points="{path}" fill="none" stroke="{fill}" stroke-width="2"/>')
        for x, y, index, depth in points:
            label = f"{minutes[index].start:%H:%M} UTC: {depth} {what} at {level}"
            marks.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{fill}"><title>{escape(label)}</title></circle>'
            )
        legend.append((f"{level} (now {series[level][-1][1]})", fill))
    caption = f"sampled once a minute; highest {top} {unit}"
    return _figure(chart_id, title, caption, _axes(minutes, top, unit) + marks + _legend(legend))


def _bars(
    chart_id: str,
    title: str,
    rows: Sequence[tuple[str, Sequence[tuple[str, float]]]],
    format_value: Callable[[float], str],
    caption: str,
) -> Markup:
    """Horizontal bars: one group per row (its name on the left), one labelled bar per value."""
    label_w, value_w = 170, 140
    per_row = max(len(values) for _, values in rows)
    group_h = per_row * ROW_HEIGHT * 0.6 + 8
    height = PAD_TOP + len(rows) * group_h + 8
    top = max((value for _, values in rows for _, value in values), default=0) or 1
    bar_w = WIDTH - label_w - value_w
    marks = []
    for row_index, (name, values) in enumerate(rows):
        y0 = PAD_TOP + row_index * group_h
        marks.append(
            f'<text x="{label_w - 6}" y="{y0 + group_h / 2:.1f}" text-anchor="end" class="label">'
            f"{escape(_clip(name))}<title>{escape(name)}</title></text>"
        )
        for value_index, (series, value) in enumerate(values):
            y = y0 + value_index * ROW_HEIGHT * 0.6
            width = max(bar_w * value / top, 1)
            fill = SERIES_FILLS[value_index % len(SERIES_FILLS)]
            text = f"{series} {format_value(value)}"
            marks.append(
                f'<rect x="{label_w}" y="{y:.1f}" width="{width:.1f}" height="{ROW_HEIGHT * 0.5:.1f}" fill="{fill}">'
                f"<title>{escape(f'{name}: {text}')}</title></rect>"
                f'<text x="{label_w + width + 4:.1f}" y="{y + ROW_HEIGHT * 0.45:.1f}" class="value">'
                f"{escape(text)}</text>"
            )
    return _figure(chart_id, title, caption, marks, height=height)


def _axes(minutes: Sequence[Minute], top: int, unit: str) -> list[str]:
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    base = PAD_TOP + plot_h
    first, last = minutes[0].start, minutes[-1].start
    return [
        f'<line x1="{PAD_LEFT}" y1="{base}" x2="{WIDTH - PAD_RIGHT}" y2="{base}" stroke="#9aa3b5"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 10}" text-anchor="end" class="axis">{top}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{base}" text-anchor="end" class="axis">0</text>',
        f'<text x="2" y="{PAD_TOP + plot_h / 2:.1f}" class="axis">{escape(unit)}</text>',
        f'<text x="{PAD_LEFT}" y="{HEIGHT - 6}" class="axis">{first:%H:%M} UTC</text>',
        f'<text x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 6}" text-anchor="end" class="axis">{last:%H:%M} UTC</text>',
    ]


def _legend(entries: Sequence[tuple[str, str]]) -> list[str]:
    x = WIDTH - PAD_RIGHT + 10
    marks = []
    for index, (name, fill) in enumerate(entries):
        y = PAD_TOP + index * 16
        marks.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{fill}"/>')
        marks.append(f'<text x="{x + 14}" y="{y + 9}" class="legend">{escape(_clip(name, 16))}</text>')
    return marks


def _figure(chart_id: str, title: str, caption: str, marks: Sequence[str], *, height: float = HEIGHT) -> Markup:
    heading = f"{chart_id}-title"
    return Markup(
        f'<figure class="chart" id="{escape(chart_id)}"><h3 id="{escape(heading)}">{escape(title)}</h3>'
        f'<svg width="{WIDTH}" height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}" role="img" '
        f'aria-labelledby="{escape(heading)}"><title>{escape(title)}</title>{"".join(marks)}</svg>'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _empty(chart_id: str, title: str, sentence: str) -> Markup:
    return Markup(
        f'<figure class="chart empty" id="{escape(chart_id)}"><h3>{escape(title)}</h3>'
        f'<p class="muted">{escape(sentence)}</p></figure>'
    )


def _level_order(levels: Mapping[str, object]) -> list[str]:
    """Priority levels highest first, as the scheduler serves them; unknown names after, sorted."""
    known = [level.name for level in sorted(Priority)]  # CRITICAL (1) first
    return [name for name in known if name in levels] + sorted(name for name in levels if name not in known)


def _clip(name: str, width: int = 26) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"
