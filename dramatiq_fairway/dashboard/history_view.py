"""What the overview and tenants pages show of the history in Redis (``ops/history.py``): the last
hour's figures, how old they are, and the charts. The dashboard keeps nothing in memory, so a
dashboard started after the jobs ran, or restarted, shows the same hour; it sees every worker host.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..ops.history import Histogram, History, Minute
from ..ops.summaries import QueueSummary
from ..store.history import OUTCOMES
from .history_charts import Share, backlog_chart, tenant_share_chart, throughput_chart, wait_chart

WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Figures:
    """The overview's tiles over ``minutes`` minutes. ``newest``: the start of the newest minute
    holding data (None when the window is empty); ``age``: seconds since that minute ended."""

    minutes: int
    outcomes: dict[str, int]
    wait_p50: float | None
    wait_p95: float | None
    newest: datetime | None
    age: float | None

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())

    @property
    def per_minute(self) -> float:
        return self.finished / self.minutes


def figures_of(minutes: list[Minute], now: float) -> Figures:
    outcomes = dict.fromkeys(OUTCOMES, 0)
    wait = Histogram()
    newest: Minute | None = None
    for minute in minutes:
        for (_queue, _actor, outcome), count in minute.outcomes.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
        for histogram in minute.waits.values():
            wait.merge(histogram)
        if minute.outcomes or minute.waits:
            newest = minute
    return Figures(
        minutes=len(minutes),
        outcomes=outcomes,
        wait_p50=wait.quantile(0.5),
        wait_p95=wait.quantile(0.95),
        newest=None if newest is None else newest.start,
        age=None if newest is None else max(0.0, now - (newest.minute + 1) * 60),
    )


def overview_history(history: History) -> dict[str, Any]:
    """The overview's figures and charts of the last hour."""
    now = history.clock()
    minutes = history.totals(WINDOW)
    return {
        "figures": figures_of(minutes, now),
        "charts": [throughput_chart(minutes), wait_chart(minutes), backlog_chart(minutes)],
    }


def tenants_history(history: History, summaries: list[QueueSummary], weights: dict[str, float]) -> dict[str, Any]:
    """The tenants page: per queue, each tenant's backlog, jobs served in the last hour, its share of
    them against its share of the weights, and a chart of both."""
    served = history.served(WINDOW)
    queues = []
    names = {summary.name for summary in summaries} | {queue for queue, _ in served}
    by_name = {summary.name: summary for summary in summaries}
    for name in sorted(names):
        summary = by_name.get(name)
        backlog: dict[str, int] = {}
        for row in summary.rows if summary else []:
            backlog[row["tenant"]] = backlog.get(row["tenant"], 0) + int(row["ready"]) + int(row["delayed"])
        tenants = sorted(set(backlog) | {tenant for queue, tenant in served if queue == name})
        total_served = sum(served.get((name, tenant), 0) for tenant in tenants)
        total_weight = sum(weights.get(tenant, 1.0) for tenant in tenants)
        shares = [
            Share(
                tenant,
                served.get((name, tenant), 0),
                served.get((name, tenant), 0) / total_served if total_served else 0.0,
                weights.get(tenant, 1.0) / total_weight if total_weight else 0.0,
            )
            for tenant in tenants
        ]
        rows = [
            {
                "tenant": share.tenant,
                "backlog": backlog.get(share.tenant, 0) if summary and summary.per_tenant else None,
                "served": share.served,
                "share": share.share if total_served else None,
                "weight": weights.get(share.tenant, 1.0),
                "weight_share": share.weight_share if total_weight else None,
            }
            for share in shares
        ]
        queues.append({"name": name, "rows": rows, "chart": tenant_share_chart(shares, name)})
    return {"queues": queues, "window_minutes": round(WINDOW.total_seconds() / 60)}
