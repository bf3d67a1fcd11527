"""``fairway dashboard [--host H] [--port P]``: the web dashboard (needs the ``dashboard`` extra)."""

from __future__ import annotations

import argparse
from typing import Any

from ..settings import load_settings
from .output import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("dashboard", help="serve the web dashboard (default http://127.0.0.1:8787/)")
    parser.add_argument("--host", help="address to bind (default FAIRWAY_DASHBOARD__HOST, 127.0.0.1)")
    parser.add_argument("--port", type=_port, help="port (default FAIRWAY_DASHBOARD__PORT, 8787)")
    parser.set_defaults(func=run)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    try:
        from ..dashboard.server import serve
    except ImportError as error:
        raise CommandError(
            f"the dashboard needs its extra: pip install 'dramatiq-fairway[dashboard]' ({error})"
        ) from None
    serve(settings, args.host, args.port)
