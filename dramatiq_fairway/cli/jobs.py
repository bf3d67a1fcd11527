"""``fairway jobs show ID | cancel ID | cancel --queue Q --tenant T ...``: a job's state, progress
and history; cancel one job, or every queued job matching a filter (``ops/bulk_cancel.py``)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from ..ops.bulk_cancel import cancel_queued, queued_job_filter
from ..settings import load_settings
from ..store.audit import AuditLog
from ..store.status import JobRecord, JobState, JobStatusStore
from .audit import os_user, record
from .output import CommandError, UsageError, emit, json_flag

_FILTERS = ("queue", "actor", "tenant", "level", "before")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("jobs", help="job status and cancel")
    verbs = parser.add_subparsers(dest="verb", required=True)
    show_parser = verbs.add_parser("show", parents=[json_flag()], help="state, progress and history of a job")
    show_parser.add_argument("id", help="message id")
    show_parser.set_defaults(func=show)
    cancel_parser = verbs.add_parser(
        "cancel", parents=[json_flag()], help="cancel a job, or every queued job matching a filter"
    )
    cancel_parser.add_argument("id", nargs="?", help="message id (or give a filter instead)")
    cancel_parser.add_argument("--queue", help="queued jobs of this queue")
    cancel_parser.add_argument("--actor", help="queued jobs of this actor")
    cancel_parser.add_argument("--tenant", help="queued jobs of this tenant")
    cancel_parser.add_argument("--level", help="queued jobs enqueued at this level (critical..batch or 1-5)")
    cancel_parser.add_argument("--before", help="queued jobs enqueued before this: 15m (ago) or an ISO 8601 time")
    cancel_parser.add_argument("--dry-run", action="store_true", help="count the matching jobs, cancel nothing")
    cancel_parser.add_argument("--yes", action="store_true", help="really cancel the matching jobs")
    cancel_parser.set_defaults(func=cancel)


def show(args: argparse.Namespace) -> None:
    record = JobStatusStore.from_settings(load_settings()).get(args.id)
    if record is None:
        raise CommandError(f"no status for job {args.id!r} (unknown, expired, or not tracked)")
    emit(args, record.as_json(), lambda console, _: _render(console, record))


def cancel(args: argparse.Namespace) -> None:
    # getattr: callers that build the namespace by hand (tests, scripts) may leave filters out.
    given = {name: value for name in _FILTERS if (value := getattr(args, name, None)) is not None}
    if args.id is not None and given:
        raise UsageError(f"give a job id or a filter, not both (id {args.id!r}, --{next(iter(given))})")
    if args.id is None:
        _cancel_matching(args, given)
        return
    settings = load_settings()
    state = JobStatusStore.from_settings(settings).cancel(args.id)
    if state is None:
        raise CommandError(f"no status for job {args.id!r} (unknown, expired, or not tracked): cannot cancel it")
    if state.finished:
        raise CommandError(f"job {args.id!r} already finished ({state.value}): nothing to cancel")
    record("jobs.cancel", {"id": args.id}, 1)
    outcome = "skipped when a worker takes it" if state is not JobState.STARTED else "interrupted within a second"
    emit(
        args,
        {"id": args.id, "state": state.value, "cancel_requested": True},
        lambda console, _: console.print(f"cancel requested for {args.id} ({state.value}): it will be {outcome}"),
    )


def _cancel_matching(args: argparse.Namespace, given: dict[str, str]) -> None:
    if not given:
        raise UsageError("give a job id (ID) or a filter (--queue, --actor, --tenant, --level, --before)")
    try:
        selection = queued_job_filter(
            queue=given.get("queue"),
            actor=given.get("actor"),
            tenant=given.get("tenant"),
            level=given.get("level"),
            before=given.get("before"),
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    settings = load_settings()
    store = JobStatusStore.from_settings(settings)
    audit = AuditLog.from_settings(settings)
    if not args.dry_run and not args.yes:
        counted = cancel_queued(store, audit, selection, who=os_user(), dry_run=True)
        raise CommandError(f"{counted.matched} queued job(s) match; pass --yes to cancel them (or --dry-run)")
    result = cancel_queued(store, audit, selection, who=os_user(), dry_run=args.dry_run)
    emit(args, result.as_json(), _render_bulk)


def _render_bulk(console: Console, data: dict[str, Any]) -> None:
    shown = " ".join(f"{name}={value}" for name, value in data["filter"].items())
    if data["dry_run"]:
        console.print(f"{data['matched']} queued job(s) match {shown}: nothing cancelled (dry run)")
    else:
        console.print(
            f"{data['cancelled']} queued job(s) matching {shown} cancelled ({data['matched']} matched): "
            "workers skip them when they take them"
        )


def _render(console: Console, record: JobRecord) -> None:
    console.print(f"[bold]{record.id}[/]  actor {record.actor}  queue {record.queue}")
    line = f"state [bold]{record.state.value}[/]"
    if record.progress is not None:
        line += f"  progress {record.progress:g}%" + (f" ({record.note})" if record.note else "")
    if record.cancel_requested and not record.state.finished:
        line += "  [yellow]cancel requested[/]"
    console.print(line)
    history = Table("state", "at (UTC)")
    for change in record.history:
        history.add_row(change.state.value, change.at.isoformat(timespec="milliseconds"))
    console.print(history)
