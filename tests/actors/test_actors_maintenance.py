"""Periodic maintenance: ``periodiq`` lists every job, a tick is claimed once and queue depth is
sampled once per tick however many schedulers send it, and the real worker runs the jobs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import dramatiq
import pytest
import redis
from dramatiq import Broker, Message

from dramatiq_fairway import setup
from dramatiq_fairway.actors import maintenance
from dramatiq_fairway.actors.maintenance import QUEUE, claim_tick
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store import history

from ..conftest import REDIS_URL
from ..support.helpers import dramatiq_command, settings_env, wait_for


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
    key = f"{{{namespace}:hist}}:b:{int(tick // 60)}"
    stored = state_client.hgetall(key)
    assert {key.decode(): int(value) for key, value in stored.items()} == first
    assert 0 < state_client.ttl(key) <= history.TTL
    tick += 60  # the next minute is a new tick
    assert maintenance.sample_queue_metrics.fn() is not None


def test_a_tick_is_claimed_once(namespace: str, state_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_BROKER", "redis")
    monkeypatch.setenv("FAIRWAY_NAMESPACE", namespace)
    now = 1_800_000_000.0
    assert claim_tick("job", 3600, now) is True
    assert claim_tick("job", 3600, now + 10) is False
    assert claim_tick("job", 3600, now + 3600) is True
    assert claim_tick("other", 3600, now) is True


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_the_domain_actor_app_runs_under_the_dramatiq_command(
    kind: str, namespace: str, short_tmp: Path, tmp_path: Path, state_client: redis.Redis
) -> None:
    settings = Settings(broker=kind, namespace=namespace, data_dir=short_tmp, state_url=REDIS_URL)  # type: ignore[arg-type]
    broker = setup(settings)
    try:
        with dramatiq_command("dramatiq_fairway.actors", settings_env(settings), log_file=tmp_path / "w.log"):
            tick = int(time.time() // 300)
            broker.enqueue(
                Message(queue_name=QUEUE, actor_name="maintenance.health_check", args=(), kwargs={}, options={})
            )
            claims = [f"{namespace}:periodic:health_check:{t}" for t in (tick, tick + 1)]
            wait_for(lambda: state_client.exists(*claims), timeout=60)
    finally:
        broker.flush_all()
        broker.close()
