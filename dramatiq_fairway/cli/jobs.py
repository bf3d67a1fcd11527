"""``fairway jobs show ID | cancel ID``: a job's state, progress and history; cancel a job."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from ..settings import load_settings
from ..store.status import JobRecord, JobState, JobStatusStore
from .output import CommandError, emit, json_flag


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("jobs", help="job status and cancel")
    verbs = parser.add_subparsers(dest="verb", required=True)
    show_parser = verbs.add_parser("show", parents=[json_flag()], help="state, progress and history of a job")
    show_parser.add_argument("id", help="message id")
    show_parser.set_defaults(func=show)
    cancel_parser = verbs.add_parser("cancel", parents=[json_flag()], help="cancel a queued or running job")
    cancel_parser.add_argument("id", help="message id")
    cancel_parser.set_defaults(func=cancel)


def show(args: argparse.Namespace) -> None:
    record = JobStatusStore.from_settings(load_settings()).get(args.id)
    if record is None:
        raise CommandError(f"no status for job {args.id!r} (unknown, expired, or not tracked)")
    emit(args, record.as_json(), lambda console, _: _render(console, record))


def cancel(args: argparse.Namespace) -> None:
    state = JobStatusStore.from_settings(load_settings()).cancel(args.id)
    if state is None:
        raise CommandError(f"no status for job {args.id!r} (unknown, expired, or not tracked): cannot cancel it")
    if state.finished:
        raise CommandError(f"job {args.id!r} already finished ({state.value}): nothing to cancel")
    outcome = "skipped when a worker takes it" if state is not JobState.STARTED else "interrupted within a second"
    emit(
        args,
        {"id": args.id, "state": state.value, "cancel_requested": True},
        lambda console, _: console.print(f"cancel requested for {args.id} ({state.value}): it will be {outcome}"),
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
