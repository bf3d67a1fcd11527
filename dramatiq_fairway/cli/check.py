"""``fairway check``: effective settings (secrets masked) and whether broker and state store answer."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from ..embedded import stop_started_here
from ..ops.diagnostics import CheckReport, check
from ..settings import load_settings
from .output import CommandError, emit, json_flag


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("check", parents=[json_flag()], help="config and connectivity")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    try:
        report = check(load_settings())
    finally:
        # A check must leave the machine as it found it: an embedded Redis it started is stopped.
        stop_started_here()
    emit(args, report.model_dump(mode="json") | {"ok": report.ok}, lambda console, _: _render(console, report))
    if not report.ok:
        raise CommandError(report.failure())


def _render(console: Console, report: CheckReport) -> None:
    servers = Table(title="servers")
    for column in ("role", "kind", "url", "answers", "version", "mode", "master", "replicas", "masters", "slots"):
        servers.add_column(column)
    for server in (report.broker, report.state_store):
        answers = "[green]yes[/]" if server.reachable else f"[red]no[/] {server.error}"
        replicas = "-" if server.replicas is None else str(server.replicas)
        servers.add_row(
            server.role,
            server.kind,
            server.url,
            answers,
            server.version or "-",
            server.mode or "-",
            server.master or "-",
            replicas,
            "-" if server.masters is None else str(server.masters),
            "-" if server.slots_covered is None else f"{server.slots_covered}/16384",
        )
    console.print(servers)
    settings = Table(title="effective settings (secrets masked)")
    settings.add_column("setting")
    settings.add_column("value")
    for name, value in _flatten(report.settings):
        settings.add_row(name, str(value))
    console.print(settings)
    degradation = Table(title="when the state store is down")
    degradation.add_column("feature")
    degradation.add_column("behaviour")
    for feature, behaviour in report.degradation.items():
        degradation.add_row(feature, behaviour)
    console.print(degradation)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


def _flatten(data: dict[str, Any], prefix: str = "FAIRWAY_") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key.upper()}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value) and prefix == "FAIRWAY_":
            rows.extend(_flatten(value, f"{name}__"))
        else:
            rows.append((name, value))
    return rows
