"""``fairway limits list | set TENANT [...] | clear TENANT``: per-tenant limits at run time (docs/limits.md).

``set`` changes only the fields given and applies to running workers at their next fetch (Redis)
or within a second (RabbitMQ); ``clear`` drops the change, so the Settings apply again.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from ..settings import load_settings
from ..store.limits import LIMIT_FIELDS, TenantLimits, validated
from .output import UsageError, emit, json_flag, whole_column


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("limits", help="per-tenant concurrency and rate limits")
    verbs = parser.add_subparsers(dest="verb", required=True)
    output = json_flag()
    verbs.add_parser("list", parents=[output], help="limits and in-flight jobs per queue and tenant").set_defaults(
        func=list_limits
    )
    set_parser = verbs.add_parser("set", parents=[output], help="change a tenant's limit for every worker")
    set_parser.add_argument("tenant", metavar="TENANT")
    set_parser.add_argument("--max-concurrency", type=int, metavar="N", help="jobs running at once")
    set_parser.add_argument("--rate", type=float, metavar="R", help="jobs started per second")
    set_parser.add_argument("--burst", type=int, metavar="B", help="jobs that may start at once after a pause")
    set_parser.add_argument("--queue", metavar="Q", help="only on this queue (default: every queue)")
    set_parser.set_defaults(func=set_limit)
    clear_parser = verbs.add_parser("clear", parents=[output], help="drop a run-time change (Settings apply)")
    clear_parser.add_argument("tenant", metavar="TENANT")
    clear_parser.add_argument("--queue", metavar="Q", help="the change made for this queue")
    clear_parser.set_defaults(func=clear_limit)


def list_limits(args: argparse.Namespace) -> None:
    emit(args, _store().list(), _render)


def set_limit(args: argparse.Namespace) -> None:
    fields = {name: getattr(args, name) for name in LIMIT_FIELDS}
    if all(value is None for value in fields.values()):
        raise UsageError("give at least one of --max-concurrency, --rate, --burst")
    try:
        validated(**{name: value for name, value in fields.items() if value is not None})
    except ConfigError as error:
        # The store names the field (max_concurrency: -3 ...); the user typed the flag.
        field, _, problem = str(error).partition(": ")
        raise UsageError(f"--{field.replace('_', '-')}: {problem}") from None
    entry = _store().set(args.tenant, args.queue, **fields)
    data = {"queue": args.queue, "tenant": args.tenant, **entry.model_dump()}
    where = f"on {args.queue}" if args.queue else "on every queue"
    summary = ", ".join(f"{name}={value}" for name, value in entry.model_dump().items() if value is not None)
    emit(args, data, lambda console, _: console.print(f"{args.tenant} {where}: {summary}"))


def clear_limit(args: argparse.Namespace) -> None:
    cleared = _store().clear(args.tenant, args.queue)
    data = {"queue": args.queue, "tenant": args.tenant, "cleared": cleared}
    text = f"{args.tenant}: run-time limit cleared" if cleared else f"{args.tenant} had no run-time limit"
    emit(args, data, lambda console, _: console.print(text))


def _store() -> TenantLimits:
    return TenantLimits.from_settings(load_settings())


def _render(console: Console, rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no limits")
        return
    table = Table(whole_column("queue"), whole_column("tenant"), "in flight / cap", "rate/s", "burst", "source")
    for row in rows:
        cap = row["max_concurrency"]
        in_flight = "-" if row["in_flight"] is None else str(row["in_flight"])
        table.add_row(
            row["queue"],
            row["tenant"] or "(default)",
            f"{in_flight} / {cap if cap is not None else '∞'}",
            "-" if row["rate"] is None else f"{row['rate']:g}",
            "-" if row["burst"] is None else str(row["burst"]),
            row["source"],
        )
    console.print(table)
