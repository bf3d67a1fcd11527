"""Dead-letter requeue and purge as the CLI and the dashboard run them: the store's operation,
then one entry in the audit stream for a real run (docs/design.md, "Bulk actions and the audit
stream"). A dry run is not recorded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dramatiq import Broker

from ..priority import Priority
from ..store.audit import AuditLog
from ..store.dead_letter_requeue import RequeueResult
from ..store.dead_letters import DeadLetterFilter, DeadLetterStore

# An audit entry names at most this many ids; a longer selection is recorded by its count.
IDS_SHOWN = 20


def requeue_dead_letters(
    store: DeadLetterStore,
    broker: Broker,
    audit: AuditLog,
    ids: list[str],
    filters: DeadLetterFilter,
    *,
    who: str,
    priority: Priority = Priority.HIGH,
    rate: float | None = None,
    dry_run: bool = False,
    allow_redacted: bool = False,
) -> RequeueResult:
    result = store.requeue(
        broker, ids, filters, priority=priority, rate=rate, dry_run=dry_run, allow_redacted=allow_redacted
    )
    if not dry_run:
        selection = {**selection_of(ids, filters), "priority": priority.name}
        audit.append(who, "dlq.requeue", selection, len(result.requeued))
    return result


def purge_dead_letters(
    store: DeadLetterStore,
    audit: AuditLog,
    ids: list[str],
    filters: DeadLetterFilter,
    *,
    who: str,
    older_than: timedelta | None = None,
) -> int:
    removed = store.purge(ids, filters, older_than=older_than)
    selection = selection_of(ids, filters)
    if older_than is not None:
        selection["older_than_s"] = older_than.total_seconds()
    audit.append(who, "dlq.purge", selection, removed)
    return removed


def selection_of(ids: list[str], filters: DeadLetterFilter) -> dict[str, Any]:
    """What an audit entry says was selected: the ids (the first ``IDS_SHOWN``) or the filter."""
    if ids:
        return {"ids": ids[:IDS_SHOWN], "ids_given": len(ids)}
    return filters.model_dump(mode="json", exclude_none=True)
