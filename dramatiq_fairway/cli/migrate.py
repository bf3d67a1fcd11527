"""``fairway migrate [--dry-run] [QUEUE ...]``: adopt queues left by stock Dramatiq (docs/operations.md)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from ..ops.broker import open_broker
from ..ops.migrate import DEFAULT_STOCK_NAMESPACE, migrate
from ..settings import load_settings
from .output import emit, json_flag, whole_column


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate", parents=[json_flag()], help="move the messages of stock Dramatiq's queues into fairway's layout"
    )
    parser.add_argument(
        "queues",
        nargs="*",
        metavar="QUEUE",
        help="only these queues (default: every stock queue found on Redis, every known queue on RabbitMQ)",
    )
    parser.add_argument("--dry-run", action="store_true", help="count what would move, move nothing")
    parser.add_argument(
        "--stock-namespace",
        default=DEFAULT_STOCK_NAMESPACE,
        type=_stock_namespace,
        metavar="NS",
        help=f"Redis: the namespace stock Dramatiq's RedisBroker used (default {DEFAULT_STOCK_NAMESPACE!r})",
    )
    parser.set_defaults(func=run)


def _stock_namespace(value: str) -> str:
    # It becomes a SCAN pattern: a glob character in it would match other namespaces' keys.
    if not value or any(char in value for char in "*?[]"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a namespace (non-empty, no *, ?, [ or ])")
    return value


def run(args: argparse.Namespace) -> None:
    broker = open_broker(load_settings())
    try:
        rows = migrate(broker, args.queues, dry_run=args.dry_run, stock_namespace=args.stock_namespace)
    finally:
        broker.close()
    emit(args, [row.model_dump() for row in rows], _render_dry if args.dry_run else _render)


def _render(console: Console, rows: list[dict[str, Any]], verb: str = "moved") -> None:
    if not rows:
        console.print("no stock queues found")
        return
    table = Table(whole_column("queue"), "ready", "delayed", "dead", "redeclared", title=f"messages {verb}")
    for row in rows:
        table.add_row(
            row["queue"], str(row["ready"]), str(row["delayed"]), str(row["dead"]), ", ".join(row["redeclared"]) or "-"
        )
    console.print(table)


def _render_dry(console: Console, rows: list[dict[str, Any]]) -> None:
    _render(console, rows, "that would move (dry run)")
