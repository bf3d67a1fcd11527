"""The dashboard's Starlette application (docs/design.md): pages, actions and their guards.

It reads and acts only through the Python API the ``fairway`` verbs use (``DeadLetterStore``,
``RedisBreakerStore``, ``JobStatusStore``, ``controls``, the broker's depth counters), so a page
and the matching verb always agree. Routes (operators bookmark them): ``/``, ``/tenants``,
``/dead-letters``, ``/dead-letters/{id}``, ``/breakers``, ``/jobs`` and ``/jobs/{id}``, ``/queues``,
``/healthz``, ``/metrics``, and those of ``dashboard/api.py`` (``/actors``, ``/api/...``: the
history in Redis, ``ops/history.py``); actions POST to the page's route plus a verb. Every action
needs a CSRF token and is refused (403) in read-only mode; the templates ask for confirmation
first; each is recorded in the audit stream (``store/audit.py``) with the signed-in user. Bulk
actions by filter and the audit page are ``dashboard/bulk.py``'s (``/bulk``, ``/audit``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args
from urllib.parse import quote

import jinja2
import pika
import redis
from dramatiq import Broker
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..errors import FairwayError
from ..ops.broker import open_stacked_broker
from ..ops.bulk_dead_letters import purge_dead_letters, requeue_dead_letters
from ..ops.controls import UnknownQueue, pause_queue, resume_queue
from ..ops.history import History
from ..ops.summaries import live_workers, queue_summaries
from ..priority import Priority
from ..settings import Settings, load_settings, mask_url
from ..store.audit import AuditLog
from ..store.breakers import RedisBreakerStore
from ..store.dead_letters import DeadLetter, DeadLetterStats, DeadLetterStore, Reason, RedactedRecords
from ..store.status import JobStatusStore
from ..store.workers import WorkerRegistry
from .api import history_routes
from .bulk import bulk_routes, who_of
from .charts import Bar, trend_bars
from .forms import FILTER_PARAMS, dead_letter_filter, limit_of, priority_of, selection_of_form
from .history_view import overview_history, tenants_history
from .security import CSRF_COOKIE, CSRF_FIELD, BasicAuth, Csrf, SecurityHeaders, has_credentials

TREND_SINCE = timedelta(hours=24)
REFRESH_MS = 3000


@dataclass(frozen=True)
class Group:
    """Dead letters sharing one fingerprint, as the dead-letter page lists them."""

    fingerprint: str
    records: list[DeadLetter]
    recent: int
    bars: list[Bar]

    @property
    def first(self) -> DeadLetter:
        return self.records[0]


def create_app(settings: Settings | None = None, *, broker: Broker | None = None) -> Starlette:
    """The dashboard for ``settings`` (``load_settings()`` when None).

    ``broker`` lets an application that already has one (with its actors declared) share it;
    otherwise the dashboard builds its own with the fairway stack on first use.
    """
    dashboard = Dashboard(settings or load_settings(), broker)
    middleware = [Middleware(SecurityHeaders)]
    if dashboard.auth:
        middleware.append(Middleware(BasicAuth, settings=dashboard.settings.dashboard))
    return Starlette(
        routes=dashboard.routes(),
        middleware=middleware,
        exception_handlers={
            HTTPException: dashboard.http_error,
            FairwayError: dashboard.fairway_error,
            RedactedRecords: dashboard.redacted_error,
            redis.RedisError: dashboard.server_error,
            pika.exceptions.AMQPError: dashboard.server_error,
        },
        lifespan=dashboard.lifespan,
    )


class Dashboard:
    """The stores, the broker and the handlers of one dashboard application."""

    def __init__(self, settings: Settings, broker: Broker | None) -> None:
        self.settings = settings
        self.read_only = settings.dashboard.read_only
        self.auth = has_credentials(settings.dashboard)
        self.dead_letters = DeadLetterStore(settings)
        self.breakers = RedisBreakerStore.from_settings(settings)
        self.jobs = JobStatusStore.from_settings(settings)
        self.audit = AuditLog.from_settings(settings, client=self.jobs.client)
        self.history = History.from_settings(settings)
        self.csrf = Csrf()
        self.templates = Jinja2Templates(env=_environment())
        self._broker = broker
        self._owns_broker = broker is None
        self._broker_lock = threading.Lock()

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", self.overview),
            Route("/tenants", self.tenants),
            Route("/dead-letters", self.dead_letter_list),
            Route("/dead-letters/requeue", self.requeue, methods=["POST"]),
            Route("/dead-letters/purge", self.purge, methods=["POST"]),
            Route("/dead-letters/{id}", self.dead_letter),
            Route("/breakers", self.breaker_list),
            Route("/breakers/{key:path}/{verb}", self.breaker_action, methods=["POST"]),
            Route("/jobs", self.job_lookup),
            Route("/jobs/{id}", self.job),
            Route("/jobs/{id}/cancel", self.cancel_job, methods=["POST"]),
            Route("/queues", self.queue_list),
            Route("/queues/{queue}/{verb}", self.queue_action, methods=["POST"]),
            Route("/healthz", self.healthz),
            Route("/metrics", self.prometheus),
            *bulk_routes(self),
            *history_routes(self),
            Mount("/static", StaticFiles(packages=[("dramatiq_fairway.dashboard", "static")]), name="static"),
        ]

    @property
    def broker(self) -> Broker:
        with self._broker_lock:
            if self._broker is None:
                # The full stack, as `fairway dlq requeue` has it: status, fairness checks at enqueue.
                self._broker = open_stacked_broker(self.settings)
            return self._broker

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:  # noqa: ARG002 (lifespan signature)
        yield
        if self._owns_broker and self._broker is not None:
            self._broker.close()

    # -- pages -----------------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        summaries = queue_summaries(self.broker, self.settings, self.dead_letters)
        in_flight = [summary.in_flight for summary in summaries]
        context = {
            "summaries": summaries,
            "backlog": sum(summary.ready for summary in summaries),
            "delayed": sum(summary.delayed for summary in summaries),
            "in_flight": None if None in in_flight else sum(count or 0 for count in in_flight),
            "dead": self.dead_letters.count(),
            **overview_history(self.history),
            "workers": live_workers(registry := WorkerRegistry.from_settings(self.settings)),
            "stale_workers": live_workers(registry, stale=True),
            "open_breakers": [state for state in self.breakers.list() if state.state != "closed"],
            "refresh_ms": REFRESH_MS,
        }
        live = request.query_params.get("fragment") == "live"
        return self.render(request, "overview_live.html" if live else "overview.html", context)

    def tenants(self, request: Request) -> Response:
        summaries = queue_summaries(self.broker, self.settings, self.dead_letters)
        context = tenants_history(self.history, summaries, self.settings.fairness.weights)
        return self.render(request, "tenants.html", context)

    def dead_letter_list(self, request: Request) -> Response:
        params = request.query_params
        filters = dead_letter_filter(params)
        limit = limit_of(params.get("limit"))
        records = self.dead_letters.list(filters, limit=limit)
        trends = {row.key: row for row in self.dead_letters.stats(by="fingerprint", since=TREND_SINCE)}
        context = {
            "groups": _groups(records, trends),
            "params": {name: params.get(name, "") for name in FILTER_PARAMS},
            "limit": limit,
            "listed": len(records),
            "priorities": [level.name for level in Priority],
            "reasons": get_args(Reason),
        }
        return self.render(request, "dead_letters.html", context)

    def dead_letter(self, request: Request) -> Response:
        record = self.dead_letters.get(request.path_params["id"])
        if record is None:
            raise HTTPException(404, f"no dead letter with id {request.path_params['id']!r}")
        return self.render(request, "dead_letter.html", {"record": record, "priorities": [p.name for p in Priority]})

    def breaker_list(self, request: Request) -> Response:
        return self.render(request, "breakers.html", {"breakers": self.breakers.list()})

    def job_lookup(self, request: Request) -> Response:
        job_id = request.query_params.get("id", "").strip()
        if job_id:
            return RedirectResponse(f"/jobs/{quote(job_id, safe='')}", status_code=303)
        return self.render(request, "job.html", {"job": None, "job_id": None})

    def job(self, request: Request) -> Response:
        job_id = request.path_params["id"]
        record = self.jobs.get(job_id)
        status = 200 if record is not None else 404
        return self.render(request, "job.html", {"job": record, "job_id": job_id}, status=status)

    def queue_list(self, request: Request) -> Response:
        summaries = queue_summaries(self.broker, self.settings, self.dead_letters)
        return self.render(request, "queues.html", {"summaries": summaries})

    def healthz(self, request: Request) -> Response:  # noqa: ARG002 (endpoint signature)
        try:
            self.dead_letters.client.ping()
        except redis.RedisError as error:
            return JSONResponse({"status": "unavailable", "state_store": type(error).__name__}, status_code=503)
        return JSONResponse({"status": "ok"})

    def prometheus(self, request: Request) -> Response:  # noqa: ARG002 (endpoint signature)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # -- actions ---------------------------------------------------------------------------------

    async def requeue(self, request: Request) -> Response:
        form = await self.guard(request)
        ids, filters = selection_of_form(form)
        allow_redacted = form.get("allow_redacted") == "on"
        level = priority_of(form.get("priority"))
        who = who_of(request, auth=self.auth)
        result = await run_in_threadpool(
            lambda: requeue_dead_letters(
                self.dead_letters,
                self.broker,
                self.audit,
                ids,
                filters,
                who=who,
                priority=level,
                allow_redacted=allow_redacted,
            )
        )
        lines = [f"requeued {item.id} as {item.new_id} ({item.actor} on {item.queue})" for item in result.requeued]
        lines += [f"skipped {item.id}: {item.reason}" for item in result.skipped]
        summary = f"{len(result.requeued)} dead letter(s) requeued at {level.name}, {len(result.skipped)} skipped"
        return self.done(request, summary, lines, back="/dead-letters")

    async def purge(self, request: Request) -> Response:
        form = await self.guard(request)
        ids, filters = selection_of_form(form)
        who = who_of(request, auth=self.auth)
        removed = await run_in_threadpool(
            lambda: purge_dead_letters(self.dead_letters, self.audit, ids, filters, who=who)
        )
        return self.done(request, f"{removed} dead letter(s) purged", [], back="/dead-letters")

    async def breaker_action(self, request: Request) -> Response:
        await self.guard(request)
        key, verb = request.path_params["key"], request.path_params["verb"]
        actions: dict[str, Callable[[str], Any]] = {
            "open": self.breakers.force_open,
            "close": self.breakers.close,
            "reset": self.breakers.reset,
        }
        if verb not in actions:
            raise HTTPException(404, f"no breaker action {verb!r} (open, close, reset)")

        def act() -> str:
            if verb != "open" and self.breakers.get(key) is None:
                raise HTTPException(404, f"no breaker named {key!r}")
            state = actions[verb](key).state
            self.audit.append(who_of(request, auth=self.auth), f"breakers.{verb}", {"key": key}, 1)
            return f"breaker {key} is {state.state}" + (" (forced)" if state.forced else "")

        return self.done(request, await run_in_threadpool(act), [], back="/breakers")

    async def cancel_job(self, request: Request) -> Response:
        await self.guard(request)
        job_id = request.path_params["id"]
        state = await run_in_threadpool(self.jobs.cancel, job_id)
        if state is None:
            raise HTTPException(
                404, f"no status for job {job_id!r} (unknown, expired, or not tracked): cannot cancel it"
            )
        if state.finished:
            raise HTTPException(409, f"job {job_id!r} already finished ({state.value}): nothing to cancel")
        self.audit.append(who_of(request, auth=self.auth), "jobs.cancel", {"id": job_id}, 1)
        return self.done(request, f"cancel requested for {job_id} ({state.value})", [], back=f"/jobs/{job_id}")

    async def queue_action(self, request: Request) -> Response:
        await self.guard(request)
        queue, verb = request.path_params["queue"], request.path_params["verb"]
        if verb not in ("pause", "resume"):
            raise HTTPException(404, f"no queue action {verb!r} (pause, resume)")
        switch = pause_queue if verb == "pause" else resume_queue
        try:
            changed = await run_in_threadpool(switch, self.broker, queue, self.settings)
        except UnknownQueue as error:
            raise HTTPException(404, str(error)) from None
        self.audit.append(who_of(request, auth=self.auth), f"queues.{verb}", {"queue": queue}, int(changed))
        word = "paused" if verb == "pause" else "resumed"
        already = "paused" if verb == "pause" else "running"
        message = f"{queue} {word}" if changed else f"{queue} was already {already}"
        return self.done(request, message, [], back="/queues")

    async def guard(self, request: Request) -> FormData:
        """The action's form, once read-only mode and the CSRF token allow it (403 otherwise)."""
        if self.read_only:
            raise HTTPException(403, "read-only mode: actions are disabled (FAIRWAY_DASHBOARD__READ_ONLY)")
        form = await request.form()
        if not self.csrf.valid(request, form.get(CSRF_FIELD)):
            raise HTTPException(403, "missing or invalid CSRF token: reload the page and try again")
        return form

    # -- rendering -------------------------------------------------------------------------------

    def render(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        session, new = self.csrf.session(request)
        page = {
            "read_only": self.read_only,
            "csrf_field": CSRF_FIELD,
            "csrf_token": self.csrf.token(session),
            "broker_kind": self.settings.broker,
            "broker_url": _broker_url(self.settings),
            "namespace": self.settings.namespace,
            **context,
        }
        response = self.templates.TemplateResponse(request, name, page, status_code=status)
        if new:
            response.set_cookie(CSRF_COOKIE, session, httponly=True, samesite="lax", path="/")
        return response

    def done(self, request: Request, summary: str, lines: list[str], *, back: str) -> Response:
        return self.render(request, "done.html", {"summary": summary, "lines": lines, "back": back})

    def http_error(self, request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return self.render(request, "error.html", {"message": error.detail}, status=error.status_code)

    def fairway_error(self, request: Request, error: Exception) -> Response:
        return self.render(request, "error.html", {"message": f"{type(error).__name__}: {error}"}, status=400)

    def redacted_error(self, request: Request, error: Exception) -> Response:
        assert isinstance(error, RedactedRecords)
        names = sorted({name for names in error.fields.values() for name in names})
        message = (
            f"{len(error.fields)} record(s) have redacted fields ({', '.join(names)}); "
            'tick "allow redacted" to requeue them with the placeholder'
        )
        return self.render(request, "error.html", {"message": message}, status=400)

    def server_error(self, request: Request, error: Exception) -> Response:
        # One line; client errors name the server's address, never its credentials.
        message = f"{type(error).__name__}: {' '.join(str(error).split())}"
        return self.render(request, "error.html", {"message": message}, status=503)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dramatiq_fairway.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["seconds"] = _seconds
    env.filters["epoch"] = _epoch
    env.filters["percent"] = lambda value: "-" if value is None else f"{value * 100:.0f}%"
    env.filters["when"] = lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"
    return env


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _epoch(value: float | None) -> str:
    return "-" if value is None else datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _broker_url(settings: Settings) -> str:
    if settings.broker == "rabbitmq":
        return mask_url(settings.rabbitmq_url)
    if settings.broker == "redis":
        return mask_url(settings.redis_url)
    return f"embedded Redis in {settings.data_dir}"


def _groups(records: list[DeadLetter], trends: Mapping[str, DeadLetterStats]) -> list[Group]:
    """Records grouped by fingerprint, in the order of each group's newest record."""
    grouped: dict[str, list[DeadLetter]] = {}
    for record in records:
        grouped.setdefault(record.fingerprint, []).append(record)
    groups = []
    for fingerprint, members in grouped.items():
        trend = trends.get(fingerprint)
        groups.append(
            Group(
                fingerprint=fingerprint,
                records=members,
                recent=trend.count if trend else 0,
                bars=trend_bars(trend.buckets if trend else []),
            )
        )
    return groups
