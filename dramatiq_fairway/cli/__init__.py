"""The ``fairway`` command: thin verbs over the Python API. Every verb takes ``--json``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import pika
import redis

from ..errors import FairwayError
from . import breakers, check, dashboard, demo, dlq, embedded, jobs, limits, queues, workers
from .output import CommandError

VERB_MODULES = (breakers, check, dashboard, demo, dlq, embedded, jobs, limits, queues, workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairway", description="Operate dramatiq-fairway queues and workers.")
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
    except FairwayError as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except CommandError as error:
        print(f"fairway: {error}", file=sys.stderr)
        return 1
    except (redis.RedisError, pika.exceptions.AMQPError, OSError) as error:
        print(f"fairway: {type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0
