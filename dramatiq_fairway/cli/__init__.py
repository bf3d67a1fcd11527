"""The ``fairway`` command: thin verbs over the Python API. Every listing verb takes ``--json``.

Errors reach the user as one line on stderr, never a traceback: exit 2 for a usage error (a bad
flag or value, named in the line), 1 for an operation that failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

import pika
import redis

from ..errors import FairwayError
from . import (
    audit,
    breakers,
    check,
    dashboard,
    demo,
    dlq,
    embedded,
    encryption,
    jobs,
    limits,
    migrate,
    queues,
    stats,
    workers,
)
from .output import CommandError, UsageError, one_line

VERB_MODULES = (
    audit,
    breakers,
    check,
    dashboard,
    demo,
    dlq,
    embedded,
    encryption,
    jobs,
    limits,
    migrate,
    queues,
    stats,
    workers,
)
USAGE_EXIT = 2


class FairwayParser(argparse.ArgumentParser):
    """argparse, but an error is one line naming the flag and the value, not the usage text."""

    def error(self, message: str) -> NoReturn:
        # argparse words it "argument --bucket: '0s' is ..."; the flag leads the line instead.
        text = one_line(message).removeprefix("argument ")
        self.exit(USAGE_EXIT, f"{self.prog}: error: {text}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = FairwayParser(prog="fairway", description="Operate dramatiq-fairway queues and workers.")
    # Sub-parsers are made with the parent's class, so every verb reports errors the same way.
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in VERB_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # pika logs every failed connection attempt with a traceback; fairway reports it in one line.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UsageError as error:
        print(f"{_prog(args)}: error: {one_line(str(error))}", file=sys.stderr)
        return USAGE_EXIT
    except FairwayError as error:
        print(f"{type(error).__name__}: {one_line(str(error))}", file=sys.stderr)
        return 1
    except CommandError as error:
        print(f"fairway: {one_line(str(error))}", file=sys.stderr)
        return 1
    except (redis.RedisError, pika.exceptions.AMQPError, OSError) as error:
        print(f"fairway: {type(error).__name__}: {one_line(str(error))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fairway: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a traceback must never reach the user; the line still says what broke
        print(f"fairway: unexpected {type(error).__name__}: {one_line(str(error))}", file=sys.stderr)
        return 1
    return 0


def _prog(args: argparse.Namespace) -> str:
    return " ".join(["fairway", *(word for word in (args.command, getattr(args, "verb", None)) if word)])
