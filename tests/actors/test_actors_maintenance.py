"""Periodic maintenance: ``periodiq`` lists every job, queue depth is sampled once per tick however
many schedulers send it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import dramatiq
import pytest
import redis
from dramatiq import Broker

from dramatiq_fairway.actors import maintenance

from ..conftest import REDIS_URL
from ..support.helpers import wait_for


@pytest.mark.usefixtures("state_client")  # drops the queue keys of a tick the scheduler may send
def test_periodiq_lists_every_maintenance_job(namespace: str) -> None:
    env = {**os.environ, "FAIRWAY_BROKER": "redis", "FAIRWAY_NAMESPACE": namespace, "FAIRWAY_STATE_URL": REDIS_URL}
    scheduler = subprocess.Popen(
        [str(Path(sys.executable).parent / "periodiq"), "dramatiq_fairway.actors"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    # A scheduler that never prints its listing is killed, which ends the read below.
    watchdog = threading.Timer(30, scheduler.kill)
    watchdog.start()
    try:
        assert scheduler.stdout is not None
        for line in scheduler.stdout:
            lines.append(line)
            if "sample_queue_metrics@" in line:
                break
    finally:
        watchdog.cancel()
        scheduler.send_signal(signal.SIGTERM)
        scheduler.wait(timeout=20)
    schedules = {
        match.group(2): match.group(1)
        for line in lines
        if (match := re.search(r"\]\s+(\S+ \S+ \S+ \S+ \S+)\s+\S+:(\S+)@fairway_maintenance", line))
    }
    assert schedules == {
        "maintenance.purge_dead_letters": "0 * * * *",
        "maintenance.health_check": "*/5 * * * *",
        "maintenance.sample_queue_metrics": "* * * * *",
    }


def test_two_schedulers_sample_a_tick_once(
    broker: Broker,
    queue_name: str,
    namespace: str,
    state_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAIRWAY_BROKER", "redis")
    monkeypatch.setenv("FAIRWAY_STATE_URL", REDIS_URL)
    monkeypatch.setenv("FAIRWAY_NAMESPACE", namespace)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def waiting(value: int) -> None: ...

    for value in range(3):
        waiting.send(value)
    tick = 1_800_000_000.0
    monkeypatch.setattr(maintenance, "time", SimpleNamespace(time=lambda: tick))

    def ready() -> int:
        # RabbitMQ publishes asynchronously: wait until the broker counts all three.
        sample = maintenance.sample_queue_metrics.fn()
        state_client.delete(f"{namespace}:periodic:sample_queue_metrics:{int(tick // 60)}")
        return sum(depth for key, depth in (sample or {}).items() if key.startswith(f"{queue_name}|")) == 3

    wait_for(ready, timeout=10, interval=0.2)
    first = maintenance.sample_queue_metrics.fn()
    second = maintenance.sample_queue_metrics.fn()  # the same tick, sent by a second scheduler
    assert first is not None
    assert second is None
    stored = state_client.hgetall(f"{namespace}:metrics:depth:{int(tick // 60)}")
    assert {key.decode(): int(value) for key, value in stored.items()} == first
    assert 0 < state_client.ttl(f"{namespace}:metrics:depth:{int(tick // 60)}") <= maintenance.SAMPLE_TTL
    tick += 60  # the next minute is a new tick
    assert maintenance.sample_queue_metrics.fn() is not None
