"""bench/dlq.py runs end to end on a tiny data set (its own throwaway Redis) and prints its table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..support.helpers import ROOT


@pytest.mark.chaos  # the real dramatiq command end to end (slow)
def test_dlq_benchmark_smoke_run() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dlq.py"), "--records", "2000", "--repetitions", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "dead-letter store, 2,000 records" in out
    for operation in ("stats --by fingerprint --since 7d", "list --fingerprint F --limit 50", "purge_expired"):
        assert operation in out
    assert "kept 2,000 records and evicted exactly the" in out
    assert "peak RSS" in out
