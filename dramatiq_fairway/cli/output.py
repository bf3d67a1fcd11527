"""How every verb prints: JSON on stdout with ``--json``, rich text for people otherwise."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Column

# Piped or redirected output is read by programs and pasted into the next command: never wrapped
# or cut, whatever the width of the terminal (if any) it came from.
_WHOLE_WIDTH = 100_000

console = Console(highlight=False)


class CommandError(Exception):
    """A verb failed in a way the user can act on; ``main`` prints it as one line and exits 1."""


class UsageError(CommandError):
    """The verb was called wrongly (a flag's value argparse cannot check alone); exit 2."""


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(text.split()) or "no detail"


def json_flag() -> argparse.ArgumentParser:
    """A parent parser giving a verb its ``--json`` flag."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return parent


def emit(args: argparse.Namespace, data: Any, render: Callable[[Console, Any], None]) -> None:
    """Print ``data`` as JSON (``--json``) or through ``render``."""
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        render(stdout_console(), data)


def stdout_console() -> Console:
    """A console for stdout: the terminal's width on a terminal, whole lines otherwise."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else _WHOLE_WIDTH)


def whole_column(header: str) -> Column:
    """A table column for values the user copies into the next command (ids, fingerprints, keys).

    On a narrow terminal rich would cut them to ``b08e08…``; folded, every character stays.
    """
    return Column(header, overflow="fold")
