"""The embedded Redis: one server per data dir, however many processes start at once."""

from __future__ import annotations

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
