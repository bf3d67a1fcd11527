"""``fairway pause QUEUE | resume QUEUE``: stop and restart intake of a queue (jobs wait, none lost)."""

from __future__ import annotations

import argparse
from typing import Any

from ..brokers import build_broker
from ..controls import pause_queue, resume_queue
from ..settings import load_settings
from .output import emit, json_flag


def register(subparsers: Any) -> None:
    pause_parser = subparsers.add_parser("pause", parents=[json_flag()], help="workers stop starting jobs of QUEUE")
    pause_parser.add_argument("queue")
    pause_parser.set_defaults(func=pause)
    resume_parser = subparsers.add_parser("resume", parents=[json_flag()], help="workers start jobs of QUEUE again")
    resume_parser.add_argument("queue")
    resume_parser.set_defaults(func=resume)


def pause(args: argparse.Namespace) -> None:
    _switch(args, paused=True)


def resume(args: argparse.Namespace) -> None:
    _switch(args, paused=False)


def _switch(args: argparse.Namespace, *, paused: bool) -> None:
    settings = load_settings()
    broker = build_broker(settings)
    try:
        changed = (pause_queue if paused else resume_queue)(broker, args.queue, settings)
    finally:
        broker.close()
    word = "paused" if paused else "resumed"
    message = f"{args.queue} {word}" if changed else f"{args.queue} was already {'paused' if paused else 'running'}"
    emit(args, {"queue": args.queue, "paused": paused, "changed": changed}, lambda console, _: console.print(message))
