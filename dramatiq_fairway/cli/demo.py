"""``fairway demo``: the quickstart app end to end on the configured broker (embedded by default).

Starts a real ``dramatiq`` worker on ``dramatiq_fairway.quickstart``, sends a batch of jobs,
shows progress, checks the answer, prints a summary, and stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..connections import uses_embedded
from ..embedded import EmbeddedRedis
from ..settings import load_settings
from .output import CommandError, console, emit, json_flag

_SPAN = 50_000
_TIMEOUT = 180.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", parents=[json_flag()], help="run the quickstart end to end")
    parser.add_argument("--jobs", type=_positive, default=200, help="jobs to send (default 200)")
    parser.add_argument("--threads", type=_positive, default=4, help="worker threads (default 4)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    embedded = EmbeddedRedis(settings.data_dir) if uses_embedded(settings) else None
    started_server = embedded.ensure_running() if embedded else False
    log = tempfile.NamedTemporaryFile(prefix="fairway-demo-", suffix=".log", delete=False)  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dramatiq",
            "dramatiq_fairway.quickstart",
            "--processes",
            "1",
            "--threads",
            str(args.threads),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=tempfile.gettempdir(),
    )
    try:
        summary = _send_and_wait(args, worker, Path(log.name))
    finally:
        _stop(worker)
        log.close()
        if embedded and started_server:
            embedded.stop()
    summary["broker"] = settings.broker
    emit(args, summary, _render)
    if not summary["verified"]:
        raise CommandError(f"the workers' answer {summary['primes']} differs from {summary['expected_primes']}")
    Path(log.name).unlink(missing_ok=True)


def _send_and_wait(args: argparse.Namespace, worker: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    from .. import quickstart  # sets up the broker from the same settings as the worker

    store = quickstart.state_store
    run_id = uuid.uuid4().hex
    key = quickstart.tally_key(quickstart.settings, run_id)
    started = time.monotonic()
    for job in range(args.jobs):
        quickstart.count_primes.send(job * _SPAN, (job + 1) * _SPAN, run_id)
    done = 0
    with Progress(console=console, disable=args.json, transient=True) as progress:
        task = progress.add_task("jobs", total=args.jobs)
        while done < args.jobs:
            if worker.poll() is not None:
                raise CommandError(f"the dramatiq worker exited with {worker.returncode}; its log: {log}")
            if time.monotonic() - started > _TIMEOUT:
                raise CommandError(f"only {done} of {args.jobs} jobs finished in {_TIMEOUT:.0f}s; worker log: {log}")
            time.sleep(0.1)
            done = int(store.hget(key, "done") or 0)
            progress.update(task, completed=done)
    elapsed = time.monotonic() - started
    primes = int(store.hget(key, "primes") or 0)
    store.delete(key)
    expected = quickstart.count_primes_between(0, args.jobs * _SPAN)
    quickstart.broker.close()
    return {
        "jobs": args.jobs,
        "completed": done,
        "primes": primes,
        "expected_primes": expected,
        "verified": primes == expected,
        "seconds": round(elapsed, 3),
        "jobs_per_second": round(done / elapsed, 1),
    }


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _render(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title=f"fairway demo on {summary['broker']}", show_header=False)
    table.add_row("jobs sent / completed", f"{summary['jobs']} / {summary['completed']}")
    table.add_row("primes found by the workers", f"{summary['primes']:,}")
    table.add_row("checked against a local count", "[green]yes[/]" if summary["verified"] else "[red]NO[/]")
    table.add_row("elapsed", f"{summary['seconds']:.2f} s ({summary['jobs_per_second']} jobs/s)")
    console.print(table)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value
