"""The metrics exporter of the ``dramatiq`` command: its multiprocess directory and ``serve_metrics``.

Under the ``dramatiq`` command (worker processes forked or spawned by its master), metrics use
prometheus_client's multiprocess mode in a directory per run of the command
(``$PROMETHEUS_MULTIPROC_DIR`` or the temp dir, then ``fairway-metrics-<uid>/run-<master pid>-<master
start>``), so samples of every process add up and a new run starts from zero. The exporter is a
process the master starts through ``Metrics.forks`` (the master never imports user code, and
imports ``serve_metrics`` by its ``module:function`` path); when it starts it deletes the
directories of runs whose master is gone (its own run's directory is new, and the master starts
forks only after the workers booted, so wiping it then would lose their first samples), and at
each scrape it drops the live gauges of worker processes that exited. It serves ``/metrics`` on
``FAIRWAY_METRICS__HOST:PORT``. Multiprocess mode needs ``PROMETHEUS_MULTIPROC_DIR`` set before
prometheus_client is imported: this module sets it on import (``middlewares/metrics.py`` imports
it first), and :func:`new_registry` repairs prometheus_client if something imported it earlier.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dramatiq.logging import get_logger

from ..embedded import pid_alive
from ..settings import load_settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _dramatiq_run_dir() -> Path | None:
    """This run's multiprocess directory when running in a process of the ``dramatiq`` command."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    under_dramatiq = program.name.startswith("dramatiq") or program.parent.name == "dramatiq"
    if multiprocessing.parent_process() is None or not under_dramatiq:
        return None
    base = Path(os.environ.get(MULTIPROC_ENV) or tempfile.gettempdir()) / f"fairway-metrics-{os.getuid()}"
    return base / _run_name(os.getppid())


def _run_name(pid: int) -> str:
    return f"run-{pid}-{_start_time(pid)}"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (tells a reused pid from the original)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


RUN_DIR = _dramatiq_run_dir()
if RUN_DIR is not None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(RUN_DIR)


def serve_metrics() -> None:
    """The exporter process (started by the ``dramatiq`` master through ``Metrics.forks``)."""
    from prometheus_client import CollectorRegistry, start_http_server

    if RUN_DIR is None:
        raise RuntimeError("serve_metrics runs only as a process of the dramatiq command")
    settings = load_settings()
    _remove_stale_runs(RUN_DIR)
    registry = CollectorRegistry()
    registry.register(_LiveMultiProcessCollector(RUN_DIR))
    where = f"{settings.metrics.host}:{settings.metrics.port}"
    try:
        server, thread = start_http_server(settings.metrics.port, settings.metrics.host, registry)
    except OSError as error:
        _report_exporter(f"unavailable: cannot listen on {where} (FAIRWAY_METRICS__PORT={settings.metrics.port})")
        # Typically a second worker on this host: its jobs must go on, the operator must learn why
        # it has no metrics. Returning ends this fork only (the master waits on its workers alone).
        get_logger(__name__).warning(
            "Metrics not served: cannot listen on %s:%d (FAIRWAY_METRICS__PORT=%d): %s; this worker runs "
            "without a metrics endpoint (give each worker on a host its own FAIRWAY_METRICS__PORT)",
            settings.metrics.host,
            settings.metrics.port,
            settings.metrics.port,
            error.strerror or error,
        )
        return
    get_logger(__name__).info("Serving metrics on http://%s:%d/metrics", settings.metrics.host, server.server_port)
    _report_exporter(f"http://{settings.metrics.host}:{server.server_port}/metrics")
    thread.join()


# In the run's directory: where the run's exporter serves, or why it does not, so that each worker
# process can say it in its heartbeat (``fairway workers``, the dashboard).
_EXPORTER_FILE = "exporter"


def _report_exporter(status: str) -> None:
    assert RUN_DIR is not None
    (RUN_DIR / _EXPORTER_FILE).write_text(status)


def exporter_status() -> str | None:
    """This ``dramatiq`` run's metrics URL, ``unavailable: <why>``, or None (no run, or no exporter yet)."""
    if RUN_DIR is None:
        return None
    try:
        return (RUN_DIR / _EXPORTER_FILE).read_text() or None
    except OSError:
        return None


def leave_run(run_dir: Path) -> None:
    """Delete this worker process's sample files, and the run's directory once no process has any left.

    The ``dramatiq`` command stops all its processes when one stops, so a worker shutting down means
    the run is ending and nobody will scrape its samples again. The exporter cannot do this: the
    workers still write while they finish their jobs, and it may be stopped before it ever ran.
    """
    for file in run_dir.glob(f"*_{os.getpid()}.db"):
        file.unlink(missing_ok=True)
    if not any(run_dir.glob("*.db")):
        (run_dir / _EXPORTER_FILE).unlink(missing_ok=True)
    for directory in (run_dir, run_dir.parent):
        with contextlib.suppress(OSError):  # not empty: another process of this run (or another run) is still there
            directory.rmdir()


def _remove_stale_runs(run_dir: Path) -> None:
    for other in run_dir.parent.glob("run-*"):
        pid = int(other.name.split("-")[1]) if other.name.split("-")[1].isdigit() else 0
        if other != run_dir and (not pid_alive(pid) or _run_name(pid) != other.name):
            shutil.rmtree(other, ignore_errors=True)


class _LiveMultiProcessCollector:
    """prometheus_client's MultiProcessCollector, first dropping live gauges of exited processes."""

    def __init__(self, path: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = path
        self.collector = MultiProcessCollector(None, path=str(path))

    def collect(self) -> Iterable[Any]:
        from prometheus_client import multiprocess

        for file in self.path.glob("gauge_live*_*.db"):
            pid = file.stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                multiprocess.mark_process_dead(int(pid), str(self.path))
        families: Iterable[Any] = self.collector.collect()
        return families


def new_registry(*, multiprocess: bool) -> CollectorRegistry:
    """A registry for this process's metrics (their values in ``RUN_DIR`` when ``multiprocess``)."""
    from prometheus_client import CollectorRegistry, values

    if multiprocess and values.ValueClass.__name__ != "MmapedValue":
        # prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; it picks the
        # value class once, at import, and would export zero metrics from this process.
        values.ValueClass = values.MultiProcessValue()
    return CollectorRegistry(auto_describe=True)
