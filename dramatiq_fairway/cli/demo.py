"""``fairway demo [--jobs N]``: the domain actors end to end on the configured broker (embedded by
default), with transient failures, a permanent one and an outage that trips a breaker; live
progress, then a summary. The work is :func:`dramatiq_fairway.demo.run_demo`."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..settings import load_settings
from .output import CommandError, UsageError, console, emit, json_flag, whole_column

DOMAINS = {"fl": "federated round", "photos": "photo import", "papers": "citation crawl"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", parents=[json_flag()], help="run the domain actors end to end, failures included"
    )
    parser.add_argument(
        "--jobs",
        type=_at_least(1),
        default=None,
        help="jobs the demo sends itself, more meaning more photos (the scenario sets the default and minimum)",
    )
    parser.add_argument("--threads", type=_at_least(1), default=8, help="worker threads (default 8)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    # The demo runs the domain actors: numpy, Pillow and pypdf come with the `actors` extra, which
    # every other verb does without.
    try:
        from ..demo.run import DEFAULT_JOBS, MIN_JOBS, DemoProgress, run_demo
    except ImportError as error:
        raise CommandError(
            f"demo: the domain actors need {error.name!r}: pip install 'dramatiq-fairway[actors]'"
        ) from None
    jobs = DEFAULT_JOBS if args.jobs is None else args.jobs
    if jobs < MIN_JOBS:
        raise UsageError(f"--jobs: {jobs} is too few, the scenario needs at least {MIN_JOBS}")
    settings = load_settings()
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        disable=args.json,
        transient=True,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def show(state: DemoProgress) -> None:
            for domain, title in DOMAINS.items():
                if domain not in tasks:
                    tasks[domain] = progress.add_task(title, total=state.total[domain], note="")
                notes = [f"{state.dead_letters[domain]} dead-lettered"] if state.dead_letters[domain] else []
                if domain == "papers":
                    notes.append(f"breaker {state.breaker}" + (", dependency DOWN" if state.outage else ""))
                note = " · ".join(notes)
                progress.update(tasks[domain], completed=state.done[domain], note=note)

        summary = run_demo(settings, jobs, threads=args.threads, on_progress=show)
    emit(args, summary.model_dump(mode="json"), _render)


def _render(console: Console, summary: dict[str, Any]) -> None:
    console.print(
        f"[bold]fairway demo on {summary['broker']}[/]: {summary['jobs_sent']} jobs sent, "
        f"{summary['jobs_finished']} finished (with follow-ups) in {summary['seconds']:.1f} s"
    )
    tenants = Table("tenant", "finished", "dead letters", "wait avg (s)", "wait max (s)", title="Per tenant")
    for row in summary["tenants"]:
        tenants.add_row(
            row["tenant"],
            str(row["jobs"]),
            str(row["dead_letters"]),
            f"{row['wait_avg_s']:.2f}",
            f"{row['wait_max_s']:.2f}",
        )
    console.print(tenants)
    levels = ", ".join(f"{level} {count}" for level, count in summary["priority_levels"].items())
    console.print(f"Priority levels: {levels}")
    retries = ", ".join(f"{kind} {count}" for kind, count in summary["retries"].items()) or "none"
    console.print(f"Retries by classification: {retries}")
    dead = Table(whole_column("fingerprint"), "count", "reason", "actor", "error", title="Dead letters by fingerprint")
    for group in summary["dead_letters"]:
        dead.add_row(
            group["fingerprint"],
            str(group["count"]),
            group["reason"],
            group["actor"] or "",
            f"{(group['error_type'] or '').rsplit('.', 1)[-1]}: {group['error_message']}",
        )
    console.print(dead)
    transitions = " → ".join(
        [summary["breaker_transitions"][0]["from_state"], *(t["to_state"] for t in summary["breaker_transitions"])]
        if summary["breaker_transitions"]
        else ["none"]
    )
    console.print(f"Breaker semantic_scholar: {transitions}")
    fl = summary["fl_round"]
    console.print(
        f"Federated round: {len(fl['participants'])} clients aggregated, missing {fl['missing']}; "
        f"held-out accuracy {fl['global_accuracy']:.3f} (mean client {fl['mean_client_accuracy']:.3f})"
    )
    console.print(
        f"Photos exported: {summary['photos_exported']} · papers fetched: {summary['papers_fetched']} "
        f"· notes written: {summary['notes_written']}"
    )


def _at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is less than {minimum}")
        return value

    return parse
