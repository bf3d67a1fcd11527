"""The embedded Redis: one server per data dir, however many processes start at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dramatiq_fairway.embedded import EmbeddedRedis

STARTER = (
    "import sys; from dramatiq_fairway.embedded import EmbeddedRedis; "
    "print(EmbeddedRedis(sys.argv[1]).ensure_running())"
)


def test_concurrent_processes_start_one_server(short_tmp: Path) -> None:
    server = EmbeddedRedis(short_tmp)
    try:
        starters = [
            subprocess.Popen([sys.executable, "-c", STARTER, str(short_tmp)], stdout=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        outputs = [p.communicate(timeout=60)[0].strip() for p in starters]
        assert sorted(outputs) == ["False", "False", "False", "True"]
        status = server.status()
        assert status.running
        assert status.pid is not None
        servers = subprocess.run(
            ["pgrep", "-f", str(short_tmp / "redis.sock")], capture_output=True, text=True, check=False
        )
        assert servers.stdout.split() == [str(status.pid)]
    finally:
        server.stop()
    assert not server.status().running


def test_fairway_check_stops_the_embedded_redis_it_started(short_tmp: Path) -> None:
    env = {**os.environ, "FAIRWAY_BROKER": "embedded", "FAIRWAY_DATA_DIR": str(short_tmp)}
    env.pop("FAIRWAY_STATE_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "dramatiq_fairway.cli", "check", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    server = EmbeddedRedis(short_tmp)
    try:
        assert json.loads(result.stdout)["broker"]["reachable"] is True, result.stderr
        assert not server.status().running
        assert _servers_of(short_tmp) == []
    finally:
        server.stop()


def test_a_script_that_started_the_embedded_redis_says_it_is_still_running(short_tmp: Path) -> None:
    server = EmbeddedRedis(short_tmp)
    try:
        starter = subprocess.run(
            [sys.executable, "-c", STARTER, str(short_tmp)], capture_output=True, text=True, timeout=60, check=True
        )
        assert starter.stderr.splitlines() == [
            f"fairway: embedded Redis still running at {short_tmp.resolve()}; stop it with: fairway embedded stop"
        ]
        # A process that only joined the running server says nothing.
        joiner = subprocess.run(
            [sys.executable, "-c", STARTER, str(short_tmp)], capture_output=True, text=True, timeout=60, check=True
        )
        assert (joiner.stdout.strip(), joiner.stderr) == ("False", "")
    finally:
        server.stop()


def _servers_of(data_dir: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", str(data_dir / "redis.sock")], capture_output=True, text=True, check=False)
    return found.stdout.split()
