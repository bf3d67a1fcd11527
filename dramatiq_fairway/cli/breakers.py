"""``fairway breakers list|open KEY|close KEY|reset KEY``: thin verbs over the breaker store.

``open`` forces a breaker open for every worker until ``close`` (or ``reset``); workers notice
within a second (they cache a closed breaker that long). ``reset`` forgets a breaker entirely.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from ..settings import load_settings
from ..store.breakers import BreakerState, RedisBreakerStore, require_key
from .audit import record
from .output import CommandError, emit, json_flag, whole_column


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("breakers", help="circuit breakers: list, force open, close, reset")
    verbs = parser.add_subparsers(dest="verb", required=True)
    output = json_flag()
    verbs.add_parser("list", parents=[output], help="every breaker and its state").set_defaults(func=list_breakers)
    for name, func, text in (
        ("open", open_breaker, "force it open for every worker until closed"),
        ("close", close_breaker, "close it and forget its failures"),
        ("reset", reset_breaker, "forget it entirely"),
    ):
        verb = verbs.add_parser(name, parents=[output], help=text)
        verb.add_argument("key", metavar="KEY")
        verb.set_defaults(func=func)


def list_breakers(args: argparse.Namespace) -> None:
    states = _store().list()
    emit(args, [state.summary() for state in states], lambda console, _: _render(console, states))


def open_breaker(args: argparse.Namespace) -> None:
    try:
        require_key(args.key)
    except ValueError as error:
        raise CommandError(str(error)) from None
    state = _store().force_open(args.key).state
    record("breakers.open", {"key": args.key}, 1)
    _show(args, state)


def close_breaker(args: argparse.Namespace) -> None:
    store = _store()
    _require(store, args.key)
    state = store.close(args.key).state
    record("breakers.close", {"key": args.key}, 1)
    _show(args, state)


def reset_breaker(args: argparse.Namespace) -> None:
    store = _store()
    _require(store, args.key)
    state = store.reset(args.key).state
    record("breakers.reset", {"key": args.key}, 1)
    _show(args, state)


def _store() -> RedisBreakerStore:
    return RedisBreakerStore.from_settings(load_settings())


def _require(store: RedisBreakerStore, key: str) -> None:
    if store.get(key) is None:
        raise CommandError(f"no breaker named {key!r} (see `fairway breakers list`)")


def _show(args: argparse.Namespace, state: BreakerState) -> None:
    emit(args, state.summary(), lambda console, _: _render(console, [state]))


def _render(console: Console, states: list[BreakerState]) -> None:
    if not states:
        console.print("no breakers")
        return
    table = Table(whole_column("key"), "state", "failures/calls", "opened at", "retry at")
    colours = {"closed": "green", "half_open": "yellow", "open": "red"}
    for state in states:
        row = state.summary()
        label = f"[{colours[state.state]}]{state.state}[/]" + (" (forced)" if state.forced else "")
        table.add_row(
            state.key, label, f"{state.failures}/{state.calls}", row["opened_at"] or "-", row["retry_at"] or "-"
        )
    console.print(table)
