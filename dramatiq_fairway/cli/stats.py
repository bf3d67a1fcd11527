"""``fairway stats``: throughput, failure ratio, wait and run-time percentiles from the history
buckets in the state store (``ops/history.py``), grouped by queue, actor, tenant or level."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from ..ops.durations import parse_duration
from ..ops.history import GROUPINGS, LONGEST, History
from ..settings import load_settings
from .output import emit, json_flag, whole_column

_SHORTEST = timedelta(minutes=1)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stats", parents=[json_flag()], help="throughput, failure ratio, wait and run-time percentiles (last 24 h kept)"
    )
    parser.add_argument(
        "--since", type=_window, default=timedelta(hours=1), help="how far back (1m to 24h; default 1h)"
    )
    parser.add_argument("--queue", help="only this queue")
    parser.add_argument(
        "--by", choices=GROUPINGS, default="queue", help="one row per queue (default), actor, tenant or level"
    )
    parser.set_defaults(func=show)


def show(args: argparse.Namespace) -> None:
    rows = History.from_settings(load_settings()).stats(args.since, by=args.by, queue=args.queue)
    emit(args, [row.model_dump() for row in rows], lambda console, data: _render(console, data, args))


def _window(text: str) -> timedelta:
    """``--since``: a duration between one minute and the 24 hours the history keeps."""
    try:
        since = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not _SHORTEST <= since <= LONGEST:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 1m and 24h (the history is kept 24 h)")
    return since


def _render(console: Console, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    minutes = round(args.since.total_seconds() / 60)
    if not rows:
        console.print(f"nothing recorded in the last {minutes} min")
        return
    columns = [
        ("finished", "finished", _count),
        ("per_minute", "per min", lambda v: "-" if v is None else f"{v:.1f}"),
        ("failure_ratio", "failure ratio", lambda v: "-" if v is None else f"{v * 100:.1f}%"),
        ("served", "served", _count),
        ("wait_p50", "wait p50", _seconds),
        ("wait_p95", "wait p95", _seconds),
        ("wait_p99", "wait p99", _seconds),
        ("runtime_p50", "run p50", _seconds),
        ("runtime_p95", "run p95", _seconds),
        ("runtime_p99", "run p99", _seconds),
        ("backlog", "backlog", _count),
    ]
    # A column no row of this grouping can fill (waits by actor, outcomes by tenant) is left out.
    shown = [column for column in columns if any(row[column[0]] is not None for row in rows)]
    table = Table(whole_column(args.by), *(title for _, title, _ in shown), title=f"last {minutes} min")
    for row in rows:
        table.add_row(row["key"], *(fmt(row[name]) for name, _, fmt in shown))
    console.print(table)


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"
