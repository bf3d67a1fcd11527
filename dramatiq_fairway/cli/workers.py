"""``fairway workers``: live worker processes, their heartbeat age and the jobs they run."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from rich.console import Console
from rich.table import Table

from ..settings import load_settings
from ..store.workers import WorkerRegistry
from .output import emit, json_flag, whole_column


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("workers", parents=[json_flag()], help="live workers, heartbeat age, in flight")
    parser.set_defaults(func=show)


def show(args: argparse.Namespace) -> None:
    registry = WorkerRegistry.from_settings(load_settings())
    now = registry.clock()
    rows = [info.as_json(now) for info in registry.live()]
    emit(args, rows, _render)


def _render(console: Console, rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no live workers")
        return
    table = Table(
        whole_column("worker"),
        "queues",
        "threads",
        "in flight",
        "processed",
        "resident",
        "replaced at",
        "heartbeat age",
        "up since (UTC)",
        "metrics",
    )
    for row in rows:
        started = dt.datetime.fromisoformat(row["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            row["id"],
            ", ".join(row["queues"]),
            str(row["threads"]),
            str(row["in_flight"]),
            str(row["processed"]),
            "-" if row["resident_mb"] is None else f"{row['resident_mb']:.0f} MB",
            _limits(row),
            f"{row['heartbeat_age']:.1f} s",
            started,
            row["metrics"] or "-",
        )
    console.print(table)


def _limits(row: dict[str, Any]) -> str:
    limits = []
    if row["max_tasks"] is not None:
        limits.append(f"{row['max_tasks']} jobs")
    if row["max_memory_mb"] is not None:
        limits.append(f"{row['max_memory_mb']} MB")
    return ", ".join(limits) or "-"
