"""Periodic maintenance: one run per tick however many schedulers, and the real worker runs it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from dramatiq import Message

from dramatiq_fairway import setup
from dramatiq_fairway.actors.maintenance import QUEUE, claim_tick
from dramatiq_fairway.settings import Settings

from ..conftest import REDIS_URL
from ..support.helpers import dramatiq_command, settings_env, wait_for


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
