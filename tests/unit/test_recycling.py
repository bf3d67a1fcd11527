"""Worker recycling's pure logic: limits per queue, when a process is due for replacement, what
the heartbeat reports, and the supervisor's handling of a worker that fails at start."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker

from dramatiq_fairway.middlewares import recycling
from dramatiq_fairway.middlewares.recycling import WorkerRecycling
from dramatiq_fairway.middlewares.workers import WorkerHeartbeats
from dramatiq_fairway.settings import RecycleLimits, Settings, WorkerSettings
from dramatiq_fairway.store.workers import WorkerInfo


def limits(**values: Any) -> WorkerSettings:
    return WorkerSettings(**values)


def test_a_queue_override_replaces_only_what_it_names() -> None:
    workers = limits(max_tasks=1000, max_memory_mb=200, queues={"photos": RecycleLimits(max_tasks=100)})
    assert workers.for_queue("photos") == RecycleLimits(max_tasks=100, max_memory_mb=200)
    assert workers.for_queue("papers") is workers
    assert workers.recycles
    assert not limits().recycles
    assert limits(queues={"photos": RecycleLimits(max_memory_mb=300)}).recycles


def test_the_queue_overrides_read_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FAIRWAY_WORKERS__MAX_TASKS", "50")
    monkeypatch.setenv("FAIRWAY_WORKERS__QUEUES", '{"photos": {"max_memory_mb": 300}}')
    workers = Settings(data_dir=tmp_path).workers
    assert workers.for_queue("photos") == RecycleLimits(max_tasks=50, max_memory_mb=300)


class Replacements(WorkerRecycling):
    def __init__(self, workers: WorkerSettings, resident_mb: int = 10) -> None:
        super().__init__(settings=Settings(workers=workers), resident_bytes=lambda: resident_mb * 2**20)
        self.reasons: list[str] = []

    def _replace(self, broker: Any, reason: str) -> None:
        self.reasons.append(reason)


def run(middleware: WorkerRecycling, queue_name: str, jobs: int) -> None:
    broker = StubBroker()
    for _ in range(jobs):
        message = MessageProxy(Message(queue_name=queue_name, actor_name="a", args=(), kwargs={}, options={}))
        middleware.before_process_message(broker, message)
        middleware.after_process_message(broker, message)


@pytest.fixture(autouse=True)
def supervised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recycling, "supervised", lambda: True)


def test_the_job_that_reaches_max_tasks_starts_the_replacement() -> None:
    middleware = Replacements(limits(max_tasks=3))
    run(middleware, "default", 2)
    assert middleware.reasons == []
    run(middleware, "default", 1)
    assert middleware.reasons == ["max_tasks: 3 jobs of 3"]


def test_a_queue_with_its_own_limit_counts_its_jobs_apart() -> None:
    middleware = Replacements(limits(max_tasks=5, queues={"photos": RecycleLimits(max_tasks=2)}))
    run(middleware, "default", 4)
    run(middleware, "photos", 1)
    assert middleware.reasons == []
    run(middleware, "photos", 1)
    assert middleware.reasons == ["max_tasks: 2 jobs of 2"]


def test_a_process_over_its_memory_limit_is_replaced_after_the_job() -> None:
    assert Replacements(limits(max_memory_mb=200), resident_mb=150).reasons == []
    middleware = Replacements(limits(max_memory_mb=200), resident_mb=300)
    run(middleware, "default", 1)
    assert middleware.reasons == ["max_memory: 300 MB resident, over 200 MB"]


def test_an_unsupervised_process_is_never_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recycling, "supervised", lambda: False)
    middleware = Replacements(limits(max_tasks=1))
    run(middleware, "default", 3)
    assert middleware.reasons == []


def test_the_heartbeat_reports_resident_memory_and_the_limits() -> None:
    class Registry:
        def __init__(self) -> None:
            self.beats: list[WorkerInfo] = []

        def beat(self, info: WorkerInfo) -> None:
            self.beats.append(info.model_copy())

        def remove(self, worker_id: str) -> None:
            pass

    registry = Registry()
    heartbeats = WorkerHeartbeats(settings=Settings(workers=limits(max_tasks=50)), registry=registry)  # type: ignore[arg-type]

    class Worker:
        consumer_whitelist = ["default"]
        worker_threads = 4

    broker = StubBroker()
    heartbeats.after_worker_boot(broker, Worker())
    heartbeats.before_worker_shutdown(broker, Worker())
    (info, *_) = registry.beats
    assert info.max_tasks == 50
    assert info.max_memory_mb is None
    assert info.resident_mb is not None
    assert info.resident_mb > 1


def test_a_worker_failing_at_start_stops_the_supervisor_with_its_code(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import logging, os, sys
        from dramatiq_fairway.middlewares.supervisor import ProcessSupervisor
        ProcessSupervisor(logging.getLogger("t")).run()
        # Only a forked worker gets here: it fails at once, as an import error would.
        with open(sys.argv[1], "a") as starts:
            starts.write(f"{os.getpid()}\\n")
        sys.exit(3)
        """
    )
    starts = tmp_path / "starts"
    done = subprocess.run([sys.executable, "-c", script, str(starts)], timeout=30, check=False)
    assert done.returncode == 3
    assert len(starts.read_text().split()) == 1
