"""``fairway embedded status|stop``: the embedded Redis of this data dir."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rich.console import Console

from ..embedded import EmbeddedRedis
from ..settings import load_settings
from .output import emit, json_flag


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("embedded", help="the embedded Redis server")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("status", parents=[json_flag()], help="is it running, where").set_defaults(func=status)
    verbs.add_parser("stop", parents=[json_flag()], help="stop it (data is kept)").set_defaults(func=stop)


def status(args: argparse.Namespace) -> None:
    state = EmbeddedRedis(load_settings().data_dir).status()
    emit(args, dataclasses.asdict(state), _render_status)


def stop(args: argparse.Namespace) -> None:
    server = EmbeddedRedis(load_settings().data_dir)
    stopped = server.stop()
    emit(
        args,
        {"stopped": stopped, "data_dir": str(server.data_dir)},
        lambda console, data: console.print("stopped" if data["stopped"] else "was not running"),
    )


def _render_status(console: Console, data: dict[str, Any]) -> None:
    if data["running"]:
        console.print(f"running: Redis {data['version']}, pid {data['pid']}, socket {data['socket']}")
    else:
        console.print(f"not running (data dir {data['data_dir']})")
