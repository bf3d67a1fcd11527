"""Cancel every queued job matching a filter: the one API of ``fairway jobs cancel --tenant ...``
and the dashboard's bulk cancel (docs/design.md, "Bulk actions and the audit stream").

Queued jobs are found through their status records (:mod:`..store.status_bulk`) on both brokers,
marked REVOKED and announced to the workers, which skip each one when they take it; the messages
stay in their queues until then (RabbitMQ cannot remove one message selectively, and on Redis a
skip costs a worker no run). A dry run counts and changes nothing. Every real run appends one
entry to the audit stream, whatever it matched.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..priority import Priority
from ..store.audit import AuditLog
from ..store.status import JobStatusStore
from ..store.status_bulk import QueuedJobFilter, QueuedJobs
from .durations import parse_duration

AUDIT_WHAT = "jobs.cancel"


@dataclass(frozen=True)
class BulkCancel:
    """What a bulk cancel selected and did (``fairway jobs cancel --json`` with a filter)."""

    selection: QueuedJobFilter
    matched: int
    cancelled: int
    dry_run: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "filter": self.selection.as_json(),
            "matched": self.matched,
            "cancelled": self.cancelled,
            "dry_run": self.dry_run,
        }


def cancel_queued(
    store: JobStatusStore,
    audit: AuditLog,
    selection: QueuedJobFilter,
    *,
    who: str,
    dry_run: bool = False,
) -> BulkCancel:
    """Revoke every queued (PENDING or RETRY) job ``selection`` matches; refused for an empty one."""
    if selection.is_empty():
        raise ValueError("filter: give at least one of queue, actor, tenant, level, before")
    jobs = QueuedJobs(store)
    found = jobs.find(selection)
    if dry_run:
        return BulkCancel(selection, matched=len(found), cancelled=0, dry_run=True)
    revoked = jobs.revoke([job.id for job in found])
    audit.append(who, AUDIT_WHAT, selection.as_json(), len(revoked))
    return BulkCancel(selection, matched=len(found), cancelled=len(revoked), dry_run=False)


def queued_job_filter(
    *,
    queue: str | None = None,
    actor: str | None = None,
    tenant: str | None = None,
    level: str | None = None,
    before: str | None = None,
    now: dt.datetime | None = None,
) -> QueuedJobFilter:
    """A filter from the words an operator typed (empty strings are not given).

    Raises ``ValueError`` with one line naming the field and its value.
    """
    return QueuedJobFilter(
        queue=queue or None,
        actor=actor or None,
        tenant=tenant or None,
        level=parse_level(level) if level else None,
        before=parse_before(before, now) if before else None,
    )


def parse_level(text: str) -> int:
    try:
        return int(Priority.parse(int(text) if text.strip().isdigit() else text.strip()))
    except ValueError:
        names = ", ".join(level.name.lower() for level in Priority)
        raise ValueError(f"level: {text!r} is not a priority level ({names} or 1-5)") from None


def parse_before(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``15m`` (that long ago) or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return (now or dt.datetime.now(dt.UTC)) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"before: {text!r} is neither a duration (30s, 15m, 2h, 7d) nor an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
