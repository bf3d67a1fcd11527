"""How fast the dashboard draws an hour of history: 100 queues, 1,000 tenants, 200 actors, 5 levels.

    .venv/bin/python bench/dashboard_history.py                  # 60 minutes of history, 20 renders
    .venv/bin/python bench/dashboard_history.py --repetitions 5  # a quick smoke run

Fills the history buckets (``store/history.py``) of a throwaway namespace on the shared Redis
with every minute of the last hour written, as busy workers would leave it: per minute each queue
has outcomes for its 2 actors, run and wait histograms, a backlog sample per level, and 10
tenants served (1,000 in all). Then times, through Starlette's TestClient (the whole request:
routing, auth middleware, Redis reads, parsing, SVG, template), the overview (``/`` and its live
fragment, which the page refreshes), ``/tenants``, ``/actors`` and ``/api/throughput``: median and
p95 over ``--repetitions`` renders after a warm-up. The namespace is deleted at the end.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import redis
from starlette.testclient import TestClient

from dramatiq_fairway.dashboard import create_app
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store import delete_namespace
from dramatiq_fairway.store.history import BOUNDS_MS, KINDS, PER_QUEUE, TOTALS, HistoryStore

REDIS_URL = "redis://127.0.0.1:6379/0"
QUEUES, ACTORS_PER_QUEUE, TENANTS, LEVELS = 100, 2, 1000, ("CRITICAL", "HIGH", "NORMAL", "LOW", "BATCH")
PAGES = ("/", "/?fragment=live", "/tenants", "/actors", "/api/throughput?minutes=60")


def fill(store: HistoryStore, minutes: int) -> int:
    """Write ``minutes`` minutes of history ending now; returns the number of hash fields written."""
    now = int(time.time() // 60)
    written = 0
    for minute in range(now - minutes + 1, now + 1):
        buckets: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
        for q in range(QUEUES):
            queue = f"queue_{q:03d}"
            for a in range(ACTORS_PER_QUEUE):
                actor = f"{queue}.actor_{a}"
                for outcome, count in (("success", 50), ("retried", 3), ("dead_lettered", 1)):
                    buckets["o"][f"{queue}|{actor}|{outcome}"] = count
                _histogram(buckets["r"], f"{queue}|{actor}", 54, (q + a) % 8 + 3)
            for level in LEVELS:
                _histogram(buckets["w"], f"{queue}|{level}", 20, (q % 6) + 2)
                buckets["b"][f"{queue}|{level}"] = q * 3
            for t in range(TENANTS // QUEUES):
                buckets["t"][f"{queue}|tenant_{q * (TENANTS // QUEUES) + t:04d}"] = 10
        buckets[TOTALS] = _totals(buckets)
        buckets[PER_QUEUE] = _per_queue(buckets)
        with store.client.pipeline(transaction=False) as pipe:
            for kind, fields in buckets.items():
                pipe.hset(store.key(kind, minute), mapping=fields)  # type: ignore[arg-type]
                pipe.expire(store.key(kind, minute), 3600)
                written += len(fields)
            pipe.execute()
    return written


def _totals(buckets: dict[str, dict[str, int]]) -> dict[str, int]:
    """The minute summed over queues, as ``HistoryStore`` writes it beside the per-queue buckets."""
    totals: dict[str, int] = {}
    for kind, strip in (("o", 2), ("w", 1), ("b", 1)):
        for field, value in buckets[kind].items():
            name = f"{kind}|{field.split('|', strip)[-1]}"
            totals[name] = totals.get(name, 0) + value
    return totals


def _per_queue(buckets: dict[str, dict[str, int]]) -> dict[str, int]:
    """The minute per queue over actors and levels, as ``HistoryStore`` writes it."""
    per_queue: dict[str, int] = {}
    for kind in ("o", "w"):
        for field, value in buckets[kind].items():
            queue, _, rest = field.partition("|")
            name = f"{queue}|{kind}|{rest.rpartition('|')[2]}"
            per_queue[name] = per_queue.get(name, 0) + value
    return per_queue


def _histogram(fields: dict[str, int], prefix: str, count: int, bucket: int) -> None:
    fields[f"{prefix}|n"] = count
    fields[f"{prefix}|s"] = count * BOUNDS_MS[bucket]
    fields[f"{prefix}|h{bucket}"] = count - count // 10
    fields[f"{prefix}|h{bucket + 2}"] = count // 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--repetitions", type=int, default=20)
    args = parser.parse_args()
    namespace = f"bench-history-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with tempfile.TemporaryDirectory(prefix="fw-") as data_dir:
            settings = Settings(broker="redis", namespace=namespace, state_url=REDIS_URL, data_dir=Path(data_dir))
            fields = fill(HistoryStore(client, namespace), args.minutes)
            print(f"machine: {platform.machine()}, Python {platform.python_version()}")
            print(
                f"history: {args.minutes} min x {QUEUES} queues, {QUEUES * ACTORS_PER_QUEUE} actors, "
                f"{TENANTS} tenants, {len(LEVELS)} levels = {fields:,} hash fields"
            )
            client_app = TestClient(create_app(settings))
            print("| page | median ms | p95 ms | bytes |\n|---|---:|---:|---:|")
            for page in PAGES:
                client_app.get(page)  # warm-up: templates compiled, connections open
                times, size = [], 0
                for _ in range(args.repetitions):
                    started = time.perf_counter()
                    response = client_app.get(page)
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, (page, response.status_code)
                    size = len(response.content)
                times.sort()
                p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
                print(f"| `{page}` | {statistics.median(times):.1f} | {p95:.1f} | {size:,} |")
    finally:
        delete_namespace(client, namespace)
        client.close()


if __name__ == "__main__":
    main()
