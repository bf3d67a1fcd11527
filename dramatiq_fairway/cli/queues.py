"""``fairway queues`` (depth per queue x level x tenant) and ``fairway pause|resume QUEUE``."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from ..ops.broker import open_broker
from ..ops.controls import pause_queue, require_known, resume_queue
from ..ops.queues import UnsupportedBroker, queue_depths
from ..settings import load_settings
from .audit import record
from .output import CommandError, emit, json_flag, whole_column

_COLUMNS = ("queue", "priority_level", "tenant", "ready", "delayed", "held", "in_flight", "dead")


def register(subparsers: Any) -> None:
    queues_parser = subparsers.add_parser(
        "queues", parents=[json_flag()], help="depth per queue x priority level x tenant, in flight, delayed, dead"
    )
    queues_parser.add_argument("queues", nargs="*", metavar="QUEUE", help="only these queues (default: all known)")
    queues_parser.set_defaults(func=show_queues)
    pause_parser = subparsers.add_parser("pause", parents=[json_flag()], help="workers stop starting jobs of QUEUE")
    pause_parser.add_argument("queue")
    pause_parser.add_argument(
        "--create", action="store_true", help="pause a queue no worker has declared yet (ahead of deployment)"
    )
    pause_parser.set_defaults(func=pause)
    resume_parser = subparsers.add_parser("resume", parents=[json_flag()], help="workers start jobs of QUEUE again")
    resume_parser.add_argument("queue")
    resume_parser.set_defaults(func=resume)


def show_queues(args: argparse.Namespace) -> None:
    settings = load_settings()
    broker = open_broker(settings)
    try:
        require_known(broker, args.queues, settings)
        rows = [row.model_dump() for row in queue_depths(broker, settings, args.queues)]
    except UnsupportedBroker as error:
        raise CommandError(str(error)) from None
    finally:
        broker.close()
    emit(args, rows, _render)


def _render(console: Console, rows: list[dict[str, Any]]) -> None:
    if not rows:
        console.print("no queued, delayed, held, running or dead messages")
        return
    table = Table(whole_column("queue"), "priority_level", whole_column("tenant"), *_COLUMNS[3:])
    for row in rows:
        table.add_row(*("n/a" if row[column] is None else str(row[column]) for column in _COLUMNS))
    console.print(table)


def pause(args: argparse.Namespace) -> None:
    _switch(args, paused=True)


def resume(args: argparse.Namespace) -> None:
    _switch(args, paused=False)


def _switch(args: argparse.Namespace, *, paused: bool) -> None:
    settings = load_settings()
    broker = open_broker(settings)
    try:
        if paused:
            changed = pause_queue(broker, args.queue, settings, create=args.create)
        else:
            changed = resume_queue(broker, args.queue, settings)
    finally:
        broker.close()
    record("queues.pause" if paused else "queues.resume", {"queue": args.queue}, int(changed))
    word = "paused" if paused else "resumed"
    message = f"{args.queue} {word}" if changed else f"{args.queue} was already {'paused' if paused else 'running'}"
    emit(args, {"queue": args.queue, "paused": paused, "changed": changed}, lambda console, _: console.print(message))
