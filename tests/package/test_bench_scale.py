"""bench/scale.py runs one small configuration on the test Redis and prints its JSON object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..conftest import REDIS_MODE, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ["--tenants", "20", "--clients", "2", "--seconds", "1", "--jobs", "2000", "--partitions", "2", "--json"]


def test_scale_benchmark_smoke_run() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), *OPTIONS],
        env={**os.environ, "FAIRWAY_REDIS_URL": REDIS_URL},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [row] = [json.loads(line) for line in done.stdout.splitlines()]
    assert {"tenants", "clients", "redis", "partitions", "picks_per_s", "p99_ms", "jain_min"} <= row.keys()
    # "cluster<masters>" on a cluster; a Sentinel service is one master: "single"
    expected = "cluster" if REDIS_MODE == "cluster" else "single"
    redis_kind = row["redis"].rstrip("0123456789")
    assert (row["tenants"], row["clients"], redis_kind, row["partitions"]) == (20, 2, expected, 2)
    assert row["picks_per_s"] > 0
    assert 0 < row["jain_min"] <= 1
