"""The dashboard's bulk actions by filter and its audit page (docs/design.md, "Bulk actions and
the audit stream").

Routes (``Dashboard.routes`` appends :func:`bulk_routes`):

- ``GET /bulk``: the two forms, cancel queued jobs by filter and requeue dead letters by filter;
- ``POST /bulk/cancel``, ``POST /bulk/requeue``: without ``confirm=yes`` a dry run that shows how
  many match and asks for confirmation (the filter travels on in hidden fields); with it, the
  action, through the same ``ops`` functions as ``fairway jobs cancel`` and ``fairway dlq requeue``,
  recorded in the audit stream with the signed-in user;
- ``GET /audit``: the newest entries of the audit stream.

Every POST passes ``Dashboard.guard`` (read-only mode and the CSRF token, 403 otherwise), then a
rate limit per user: :data:`BULK_REQUESTS_PER_MINUTE` bulk requests (dry runs and confirmations
alike, since a dry run scans as much as the action) within any 60 s, 429 beyond. The limit is
kept in this process's memory: a restarted dashboard starts afresh, and each of several
dashboard processes counts alone.
"""

from __future__ import annotations

import base64
import binascii
import collections
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..ops.bulk_cancel import cancel_queued, queued_job_filter
from ..ops.bulk_dead_letters import requeue_dead_letters
from ..priority import Priority
from ..store.status_bulk import QueuedJobFilter
from .forms import dead_letter_filter, priority_of

if TYPE_CHECKING:
    from .app import Dashboard

BULK_REQUESTS_PER_MINUTE = 10
WINDOW_SECONDS = 60.0
AUDIT_SHOWN = 100


class BulkRateLimit:
    """At most ``limit`` requests per user within any ``window`` seconds (a sliding window)."""

    def __init__(self, limit: int, window: float = WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._seen: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, who: str) -> float:
        """0 when ``who`` may go on (the request is counted), else the seconds until a slot frees."""
        now = self.clock()
        with self._lock:
            seen = self._seen.setdefault(who, collections.deque())
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if len(seen) >= self.limit:
                return seen[0] + self.window - now
            seen.append(now)
            return 0.0


def bulk_routes(dashboard: Dashboard) -> list[Route]:
    actions = BulkActions(dashboard)
    return [
        Route("/bulk", actions.page),
        Route("/bulk/cancel", actions.cancel, methods=["POST"]),
        Route("/bulk/requeue", actions.requeue, methods=["POST"]),
        Route("/audit", actions.audit_page),
    ]


class BulkActions:
    """The handlers of the bulk routes, over one dashboard's stores and guards."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.audit = dashboard.audit
        self.rate_limit = BulkRateLimit(BULK_REQUESTS_PER_MINUTE)

    def page(self, request: Request) -> Response:
        context = {"priorities": [level.name for level in Priority], "per_minute": self.rate_limit.limit}
        return self.dashboard.render(request, "bulk.html", context)

    def audit_page(self, request: Request) -> Response:
        entries = self.audit.list(limit=AUDIT_SHOWN)
        return self.dashboard.render(request, "audit.html", {"entries": entries, "shown": AUDIT_SHOWN})

    async def cancel(self, request: Request) -> Response:
        form, who = await self._admit(request)
        selection = _job_filter(form)
        confirmed = form.get("confirm") == "yes"
        result = await run_in_threadpool(
            lambda: cancel_queued(self.dashboard.jobs, self.audit, selection, who=who, dry_run=not confirmed)
        )
        # The confirmation carries the resolved filter: "15m" means 15 minutes before the dry run.
        fields = {name: str(value) for name, value in selection.as_json().items()}
        if not confirmed:
            return self._confirm(request, "/bulk/cancel", f"{result.matched} queued job(s) match", fields)
        summary = f"{result.cancelled} queued job(s) cancelled ({result.matched} matched); workers skip them"
        return self.dashboard.done(request, summary, [], back="/audit")

    async def requeue(self, request: Request) -> Response:
        form, who = await self._admit(request)
        filters = dead_letter_filter(form)
        if filters.is_empty():
            raise HTTPException(400, "filter: give at least one of queue, actor, error-type, fingerprint, tenant, ...")
        level = priority_of(form.get("priority"))
        allow_redacted = form.get("allow_redacted") == "on"
        confirmed = form.get("confirm") == "yes"
        result = await run_in_threadpool(
            lambda: requeue_dead_letters(
                self.dashboard.dead_letters,
                self.dashboard.broker,
                self.audit,
                [],
                filters,
                who=who,
                priority=level,
                dry_run=not confirmed,
                allow_redacted=allow_redacted,
            )
        )
        names = ("queue", "actor", "error-type", "fingerprint", "tenant", "reason", "since", "priority")
        fields = {name: str(form.get(name) or "") for name in names}
        fields["allow_redacted"] = "on" if allow_redacted else ""
        if not confirmed:
            question = f"{len(result.requeued)} dead letter(s) match ({len(result.skipped)} would be skipped)"
            return self._confirm(request, "/bulk/requeue", question, fields)
        summary = f"{len(result.requeued)} dead letter(s) requeued at {level.name}, {len(result.skipped)} skipped"
        return self.dashboard.done(
            request, summary, [f"skipped {s.id}: {s.reason}" for s in result.skipped], back="/audit"
        )

    async def _admit(self, request: Request) -> tuple[FormData, str]:
        form = await self.dashboard.guard(request)
        who = who_of(request, auth=self.dashboard.auth)
        wait = self.rate_limit.admit(who)
        if wait:
            raise HTTPException(
                429,
                f"rate limit: at most {self.rate_limit.limit} bulk requests a minute per user; "
                f"try again in {wait:.0f} s",
            )
        return form, who

    def _confirm(self, request: Request, action: str, question: str, fields: dict[str, Any]) -> Response:
        context = {"action": action, "question": question, "fields": {k: v for k, v in fields.items() if v}}
        return self.dashboard.render(request, "bulk_confirm.html", context)


def who_of(request: Request, *, auth: bool) -> str:
    """Who acts, for the audit stream: the HTTP basic user (``BasicAuth`` checked the password
    already), else the client's address."""
    if auth:
        _, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            return base64.b64decode(encoded, validate=True).partition(b":")[0].decode() + " (dashboard)"
        except (binascii.Error, ValueError):
            pass
    host = request.client.host if request.client else "unknown"
    return f"anonymous@{host} (dashboard)"


def _job_filter(form: FormData) -> QueuedJobFilter:
    def text(name: str) -> str | None:
        value = form.get(name)
        return value if isinstance(value, str) else None

    try:
        selection = queued_job_filter(
            queue=text("queue"), actor=text("actor"), tenant=text("tenant"), level=text("level"), before=text("before")
        )
    except ValueError as error:
        raise HTTPException(400, str(error)) from None
    if selection.is_empty():
        raise HTTPException(400, "filter: give at least one of queue, actor, tenant, level, before")
    return selection
