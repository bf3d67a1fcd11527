"""Every example runs as documented: the stock ``dramatiq examples.X`` worker, then
``python examples/X.py`` as the producer, on real Redis in a namespace of its own."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import REDIS_URL, redis_for_tests
from ..support.helpers import ROOT, dramatiq_command

# The real dramatiq command end to end: slow, so with the chaos tests outside the quick subset.
pytestmark = pytest.mark.chaos

EXPECTED_OUTPUT = {
    "quickstart": [r"^20 jobs done: 17984 primes below 200,000$"],
    "fl_round": [
        r"^round example-\w+: 5 clients training$",
        r"^aggregated 5 clients \(\d+ samples\), missing \[\]$",
        r"^held-out accuracy 0\.\d+ \(mean of the clients' own models: 0\.\d+\)$",
    ],
    "photo_pipeline": [r"^exported (alice|bob)/export/IMG_0000\.jpg: 480x360 JPEG$", r"^6 photos exported under "],
    "paper_crawl": [
        r"^crawled \d+ papers within 2 references of arXiv:1706\.03762:$",
        r"^  2017   120000  Attention Is All You Need$",
        r"^note Attention Is All You Need\.md links 7 references, e\.g\. - \[\[",
    ],
    "custom_classifier": [
        r"^order-1: SUCCESS after 3 attempt\(s\)$",
        r"^order-2: DEAD_LETTER after 1 attempt\(s\), dead-lettered \(permanent: .*CardDeclined\)$",
    ],
}


@pytest.fixture
def example_env(namespace: str, short_tmp: Path) -> Iterator[dict[str, str]]:
    """Real Redis, a namespace of the test's own; its queues and state are deleted afterwards."""
    (short_tmp / "tmp").mkdir()
    yield {
        "TMPDIR": str(short_tmp / "tmp"),
        "FAIRWAY_BROKER": "redis",
        "FAIRWAY_REDIS_URL": REDIS_URL,
        "FAIRWAY_NAMESPACE": namespace,
        "FAIRWAY_DATA_DIR": str(short_tmp),
        "FAIRWAY_METRICS__PORT": "0",
    }
    client = redis_for_tests()
    keys = [
        *client.scan_iter(match=f"{namespace}:*", count=1000),
        *client.scan_iter(match=f"{{{namespace}:*", count=1000),
    ]
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.parametrize("example", sorted(EXPECTED_OUTPUT))
def test_example_runs_with_the_stock_dramatiq_command(
    example: str, example_env: dict[str, str], tmp_path: Path
) -> None:
    worker_log = tmp_path / "worker.log"
    with dramatiq_command(f"examples.{example}", example_env, threads=4, log_file=worker_log):
        producer = subprocess.run(
            [sys.executable, f"examples/{example}.py"],
            cwd=ROOT,
            env={**_without_fairway(), **example_env},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    assert producer.returncode == 0, producer.stderr + worker_log.read_text()
    leftovers = sorted(str(path) for path in Path(example_env["TMPDIR"]).rglob("*"))
    assert leftovers == [], f"the example and its worker left {leftovers} in the temp dir" + worker_log.read_text()
    lines = producer.stdout.splitlines()
    for pattern in EXPECTED_OUTPUT[example]:
        assert any(re.search(pattern, line) for line in lines), f"{pattern!r} not in:\n{producer.stdout}"


def _without_fairway() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if not key.startswith("FAIRWAY_")}
