"""The dashboard's JSON twins under ``/api/`` and its actors page, all read from the history in
Redis (``ops/history.py``) or the brokers' counters, behind the pages' own auth (the app's
middleware guards every route but ``/healthz``).

``/api/throughput?minutes=60[&queue=Q]``
    List of ``{"minute", "queue", "success", "retried", "dead_lettered", "failed", "wait_p50",
    "wait_p95"}`` per minute (ISO 8601 UTC start) and queue that has data; waits in seconds.
``/api/tenants?minutes=60[&queue=Q]``
    List of ``{"queue", "tenant", "served", "share", "weight", "weight_share"}``.
``/api/queues[?queue=Q]``
    The live backlog: list of ``{"queue", "ready", "delayed", "in_flight", "dead", "paused",
    "by_level"}``; with ``queue`` that queue's object alone, so KEDA's metrics API scaler can
    poll ``valueLocation: ready``.
``/api/stats?since=1h&by=queue[&queue=Q]``
    The ``fairway stats --json`` rows.
``/actors``
    The slowest actors chart and the per-actor table of the last hour.

A bad parameter is a 400 with ``{"error": "<one line naming the field and the value>"}``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..ops.durations import parse_duration
from ..ops.history import GROUPINGS, LONGEST
from ..ops.summaries import queue_summaries
from .history_charts import slowest_actors_chart
from .history_view import WINDOW

if TYPE_CHECKING:
    from .app import Dashboard

MAX_MINUTES = round(LONGEST.total_seconds() / 60)


class BadParameter(ValueError):
    """A query parameter of an ``/api/`` route is unusable; answered as a 400 naming it."""


def history_routes(dashboard: Dashboard) -> list[Route]:
    """The routes of this module, for ``Dashboard.routes``."""
    api = HistoryApi(dashboard)
    return [
        Route("/api/throughput", api.throughput),
        Route("/api/tenants", api.tenants),
        Route("/api/queues", api.queues),
        Route("/api/stats", api.stats),
        Route("/actors", api.actors),
    ]


class HistoryApi:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def throughput(self, request: Request) -> Response:
        return _answer(
            lambda: self.dashboard.history.throughput(_minutes(request), queue=request.query_params.get("queue"))
        )

    def tenants(self, request: Request) -> Response:
        def rows() -> list[dict[str, Any]]:
            served = self.dashboard.history.served(timedelta(minutes=_minutes(request)))
            weights = self.dashboard.settings.fairness.weights
            wanted = request.query_params.get("queue")
            result = []
            for queue in sorted({queue for queue, _ in served if wanted in (None, queue)}):
                tenants = sorted(tenant for q, tenant in served if q == queue)
                total = sum(served[(queue, tenant)] for tenant in tenants)
                total_weight = sum(weights.get(tenant, 1.0) for tenant in tenants)
                result += [
                    {
                        "queue": queue,
                        "tenant": tenant,
                        "served": served[(queue, tenant)],
                        "share": served[(queue, tenant)] / total if total else None,
                        "weight": weights.get(tenant, 1.0),
                        "weight_share": weights.get(tenant, 1.0) / total_weight,
                    }
                    for tenant in tenants
                ]
            return result

        return _answer(rows)

    def queues(self, request: Request) -> Response:
        dashboard = self.dashboard
        wanted = request.query_params.get("queue")
        rows = []
        for summary in queue_summaries(dashboard.broker, dashboard.settings, dashboard.dead_letters):
            by_level: dict[str, int] = {}
            for row in summary.rows:
                by_level[row["priority_level"]] = by_level.get(row["priority_level"], 0) + int(row["ready"])
            rows.append(
                {
                    "queue": summary.name,
                    "ready": summary.ready,
                    "delayed": summary.delayed,
                    "in_flight": summary.in_flight,
                    "dead": summary.dead,
                    "paused": summary.paused,
                    "by_level": by_level,
                }
            )
        if wanted is None:
            return JSONResponse(rows)
        match = next((row for row in rows if row["queue"] == wanted), None)
        if match is None:
            return JSONResponse({"error": f"queue: no queue named {wanted!r}"}, status_code=404)
        return JSONResponse(match)

    def stats(self, request: Request) -> Response:
        def rows() -> list[dict[str, Any]]:
            params = request.query_params
            by = params.get("by", "queue")
            if by not in GROUPINGS:
                raise BadParameter(f"by: {by!r} is not one of {', '.join(GROUPINGS)}")
            since = _since(params.get("since", "1h"))
            history = self.dashboard.history
            return [row.model_dump() for row in history.stats(since, by=by, queue=params.get("queue"))]

        return _answer(rows)

    def actors(self, request: Request) -> Response:
        rows = self.dashboard.history.stats(WINDOW, by="actor")
        context = {
            "rows": rows,
            "chart": slowest_actors_chart(rows),
            "window_minutes": round(WINDOW.total_seconds() / 60),
        }
        return self.dashboard.render(request, "actors.html", context)


def _answer(rows: Any) -> Response:
    try:
        return JSONResponse(rows())
    except BadParameter as error:
        return JSONResponse({"error": str(error)}, status_code=400)


def _minutes(request: Request) -> int:
    text = request.query_params.get("minutes", "60")
    try:
        minutes = int(text)
    except ValueError:
        raise BadParameter(f"minutes: {text!r} is not a whole number of minutes") from None
    if not 1 <= minutes <= MAX_MINUTES:
        raise BadParameter(f"minutes: {minutes} is not between 1 and {MAX_MINUTES} (the history is kept 24 h)")
    return minutes


def _since(text: str) -> timedelta:
    try:
        since = parse_duration(text)
    except ValueError as error:
        raise BadParameter(f"since: {error}") from None
    if not timedelta(minutes=1) <= since <= LONGEST:
        raise BadParameter(f"since: {text!r} is not between 1m and 24h (the history is kept 24 h)")
    return since
