"""``fairway workers``: live worker processes with heartbeat age, in flight and processed counts."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable

import dramatiq
import pytest
import redis
from dramatiq import Broker, Worker

from dramatiq_fairway.cli import main
from dramatiq_fairway.middlewares.workers import WorkerHeartbeats
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.workers import STALE_KEPT, WorkerInfo, WorkerRegistry

from ..support.helpers import settings_env, wait_for


def _info(worker_id: str, beat_at: dt.datetime) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id,
        host="h",
        pid=1,
        queues=["q"],
        threads=2,
        in_flight=0,
        processed=0,
        started_at=beat_at,
        beat_at=beat_at,
    )


def test_a_worker_silent_past_the_timeout_is_stale_then_dropped(state_client: redis.Redis, namespace: str) -> None:
    now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
    registry = WorkerRegistry(state_client, namespace, timeout=60, clock=lambda: now)
    registry.beat(_info("fresh", now - dt.timedelta(seconds=59)))
    registry.beat(_info("silent", now - dt.timedelta(seconds=61)))
    registry.beat(_info("dead", now - dt.timedelta(seconds=61 + STALE_KEPT)))
    assert [info.id for info in registry.live()] == ["fresh"]
    assert [info.id for info in registry.stale()] == ["silent"]
    assert sorted(state_client.hkeys(registry.key)) == [b"fresh", b"silent"]


def test_workers_lists_a_running_worker_with_its_jobs(  # noqa: PLR0917 (fixtures)
    broker: Broker,
    settings: Settings,
    queue_name: str,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    release = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def hold() -> None:
        release.wait(10)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def quick() -> None:
        pass

    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    next(m for m in broker.middleware if isinstance(m, WorkerHeartbeats)).interval = 0.1
    quick.send()
    worker = start_worker(threads=2)
    registry = WorkerRegistry.from_settings(settings)
    wait_for(lambda: any(info.processed == 1 for info in registry.live()))
    hold.send()
    try:
        row = wait_for(lambda: _row_with(capsys, in_flight=1))
    finally:
        release.set()
    assert (row["queues"], row["threads"], row["processed"]) == ([queue_name], 2, 1)
    assert 0 <= row["heartbeat_age"] < 10
    worker.stop()
    assert registry.live() == []


def _row_with(capsys: pytest.CaptureFixture[str], *, in_flight: int) -> dict[str, object] | None:
    assert main(["workers", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    return next((row for row in rows if row["in_flight"] == in_flight), None)
