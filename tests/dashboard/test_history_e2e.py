"""Issue #24's acceptance on each broker: 500 jobs run by the stock ``dramatiq`` command with 2
processes appear in ``fairway stats --json`` and in ``/api/throughput`` of a dashboard started only
afterwards, and a second dashboard instance (a restart) shows the same."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq import Broker

from dramatiq_fairway.settings import Settings

from ..support.dashboard_support import client_for
from ..support.helpers import ROOT, dramatiq_command, settings_env, wait_for

# The real dramatiq command end to end: slow, so with the chaos tests outside the quick subset.
pytestmark = pytest.mark.chaos

JOBS = 500


def test_jobs_of_the_dramatiq_command_appear_in_stats_and_in_a_dashboard_started_afterwards(
    broker: Broker, settings: Settings, state_client: redis.Redis, queue_name: str, tmp_path: Path
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0, actor_name="record")
    def record() -> None: ...

    env = {**settings_env(settings), "FAIRWAY_TEST_QUEUE": queue_name}
    runs = f"{settings.namespace}:test:runs"
    log = tmp_path / "worker.log"
    with dramatiq_command("tests.support.recycling_app", env, processes=2, threads=4, log_file=log) as command:
        for _ in range(JOBS):
            record.send()
        wait_for(lambda: state_client.llen(runs) >= JOBS, timeout=240, interval=0.25)
        assert command.poll() is None, log.read_text()[-3000:]

    # The workers have stopped (and flushed); only now do the CLI and the dashboards look.
    stats = subprocess.run(
        [sys.executable, "-m", "dramatiq_fairway.cli", "stats", "--json", "--queue", queue_name],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    [row] = json.loads(stats.stdout)
    assert (row["finished"], row["success"], row["served"]) == (JOBS, JOBS, JOBS)
    for _ in range(2):  # a dashboard started after the jobs ran, then a second one (a restart)
        rows = client_for(settings, broker).get("/api/throughput", params={"queue": queue_name}).json()
        assert sum(row["success"] for row in rows) == JOBS
        overview = client_for(settings, broker).get("/").text
        assert "Newest data: the minute from" in overview
        chart = overview.split('id="chart-throughput"')[1].split("</figure>")[0]
        assert re.search(r"<title>\d\d:\d\d UTC: \d+ success</title>", chart)
