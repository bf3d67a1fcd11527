"""``fairway audit [--limit N]``: the newest entries of the audit stream (who, what, filter, count, when).

``os_user`` is the ``who`` of every action the CLI records.
"""

from __future__ import annotations

import argparse
import getpass
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from ..settings import load_settings
from ..store.audit import AuditLog
from .output import emit, json_flag


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("audit", parents=[json_flag()], help="who did what, to how many, when")
    parser.add_argument("--limit", type=_positive_int, default=50, help="entries shown, newest first")
    parser.set_defaults(func=show)


def show(args: argparse.Namespace) -> None:
    entries = AuditLog.from_settings(load_settings()).list(limit=args.limit)
    emit(args, [entry.as_json() for entry in entries], _render)


def os_user() -> str:
    """The operating-system user running the command, as audit entries name the CLI's operator."""
    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return "unknown (cli)"


def record(what: str, selection: dict[str, Any], count: int) -> None:
    """Append an action of this command to the audit stream, as the OS user."""
    AuditLog.from_settings(load_settings()).append(os_user(), what, selection, count)


def _render(console: Console, entries: list[dict[str, Any]]) -> None:
    if not entries:
        console.print("no audit entries")
        return
    table = Table("when (UTC)", "who", "what", "filter", "count")
    for entry in entries:
        table.add_row(entry["when"], entry["who"], entry["what"], json.dumps(entry["filter"]), str(entry["count"]))
    console.print(table)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)
