"""Worker recycling under the real ``dramatiq`` command, on real Redis and real RabbitMQ: processes
are replaced at their job and memory limits, no job is lost or run twice, the command keeps running."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq import Broker

from dramatiq_fairway.settings import Settings

from ..support.helpers import ROOT, dramatiq_command, settings_env, wait_for

# The real dramatiq command end to end: slow, so with the chaos tests outside the quick subset.
pytestmark = pytest.mark.chaos

JOBS = 1_000


def runs(state_client: redis.Redis, settings: Settings) -> list[tuple[str, int, float]]:
    """(message id, pid, start ms) of each run."""
    lines = state_client.lrange(f"{settings.namespace}:test:runs", 0, -1)
    parsed = [line.decode().split() for line in lines]
    return [(message_id, int(pid), float(started)) for message_id, pid, started in parsed]


def test_processes_are_replaced_every_50_jobs_and_every_job_runs_exactly_once(
    broker: Broker, settings: Settings, state_client: redis.Redis, queue_name: str, tmp_path: Path
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0, actor_name="record")
    def record() -> None: ...

    env = {**settings_env(settings), "FAIRWAY_TEST_QUEUE": queue_name, "FAIRWAY_WORKERS__MAX_TASKS": "50"}
    log = tmp_path / "worker.log"
    with dramatiq_command("tests.support.recycling_app", env, processes=2, threads=4, log_file=log) as command:
        sent = {record.send().message_id for _ in range(JOBS)}
        wait_for(lambda: len(runs(state_client, settings)) >= JOBS, timeout=240, interval=0.25)
        assert command.poll() is None, log.read_text()[-3000:]
        workers = _workers_json(env)
    ran = runs(state_client, settings)
    ids = [message_id for message_id, _pid, _started in ran]
    assert len(ids) == JOBS
    assert set(ids) == sent
    pids = {pid for _id, pid, _started in ran}
    assert len(pids) >= 20, f"only {len(pids)} worker processes ran the jobs"
    starts = sorted(started for *_, started in ran)
    idle = max(later - earlier for earlier, later in itertools.pairwise(starts))
    # Reported, not asserted (timing belongs to benchmarks): docs/operations.md quotes it.
    print(f"{len(pids)} processes; longest time without a job starting: {idle:.0f} ms")
    assert "Replacing worker process" in log.read_text()
    assert all(row["max_tasks"] == 50 for row in workers)
    assert all(row["resident_mb"] > 0 for row in workers)


def test_a_process_over_its_memory_limit_is_replaced_after_the_job(
    broker: Broker, settings: Settings, state_client: redis.Redis, queue_name: str, tmp_path: Path
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0, actor_name="hog")
    def hog(megabytes: int) -> None: ...

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0, actor_name="record")
    def record() -> None: ...

    env = {**settings_env(settings), "FAIRWAY_TEST_QUEUE": queue_name, "FAIRWAY_WORKERS__MAX_MEMORY_MB": "200"}
    log = tmp_path / "worker.log"
    with dramatiq_command("tests.support.recycling_app", env, processes=1, threads=1, log_file=log) as command:
        record.send()
        wait_for(lambda: len(runs(state_client, settings)) == 1, timeout=30)
        hog.send(300)
        wait_for(lambda: len(runs(state_client, settings)) == 2, timeout=30)
        record.send()
        wait_for(lambda: len(runs(state_client, settings)) == 3, timeout=30)
        assert command.poll() is None
    (_, first, _), (_, hogged, _), (_, after, _) = runs(state_client, settings)
    assert first == hogged
    assert after != hogged
    assert "max_memory" in log.read_text()


def _workers_json(env: dict[str, str]) -> list[dict[str, object]]:
    wait_for(lambda: _read_workers(env), timeout=15)
    return _read_workers(env)


def _read_workers(env: dict[str, str]) -> list[dict[str, object]]:
    output = subprocess.run(
        [sys.executable, "-m", "dramatiq_fairway.cli", "workers", "--json"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows: list[dict[str, object]] = json.loads(output)
    return rows
