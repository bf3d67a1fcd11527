"""`dramatiq examples.quickstart` end to end with the real command (`fairway demo`: tests/package/test_demo.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from dramatiq import Message

from dramatiq_fairway import setup
from dramatiq_fairway.connections import state_store_client
from dramatiq_fairway.demo.prime_tally import count_primes_between, tally_key
from dramatiq_fairway.embedded import EmbeddedRedis
from dramatiq_fairway.settings import Settings

from ..conftest import REDIS_URL
from ..support.helpers import dramatiq_command, settings_env, wait_for

# The real dramatiq command end to end: slow, so with the chaos tests outside the quick subset.
pytestmark = pytest.mark.chaos


def test_count_primes_between_matches_known_values() -> None:
    assert count_primes_between(0, 100) == 25
    assert count_primes_between(0, 1_000_000) == 78_498
    assert count_primes_between(100, 200) == 21
    assert count_primes_between(0, 2) == 0


# dramatiq_fairway.quickstart: the app's old path, which users may start, kept as an alias.
@pytest.mark.parametrize(
    ("kind", "app"),
    [
        ("redis", "examples.quickstart"),
        ("rabbitmq", "examples.quickstart"),
        ("embedded", "examples.quickstart"),
        ("redis", "dramatiq_fairway.demo.quickstart"),
        ("redis", "dramatiq_fairway.quickstart"),
    ],
)
def test_dramatiq_command_runs_the_quickstart(
    kind: str, app: str, namespace: str, short_tmp: Path, tmp_path: Path
) -> None:
    state_url = None if kind == "embedded" else REDIS_URL
    settings = Settings(broker=kind, namespace=namespace, data_dir=short_tmp, state_url=state_url)  # type: ignore[arg-type]
    broker = setup(settings)
    store = state_store_client(settings)
    run_id = uuid.uuid4().hex
    try:
        with dramatiq_command(app, settings_env(settings), threads=2, log_file=tmp_path / "w.log"):
            for job in range(10):
                broker.enqueue(
                    Message(
                        queue_name="quickstart",
                        actor_name="count_primes",
                        args=(job * 1000, (job + 1) * 1000, run_id),
                        kwargs={},
                        options={},
                    )
                )
            wait_for(lambda: int(store.hget(tally_key(settings, run_id), "done") or 0) == 10, timeout=60)
        assert int(store.hget(tally_key(settings, run_id), "primes") or 0) == count_primes_between(0, 10_000)
    finally:
        store.delete(tally_key(settings, run_id))
        broker.close()
        if kind == "embedded":
            EmbeddedRedis(short_tmp).stop()


def test_the_quickstart_keeps_its_old_module_path(namespace: str, short_tmp: Path) -> None:
    # In a process of its own: importing the app sets up the global broker.
    settings = Settings(broker="redis", namespace=namespace, data_dir=short_tmp, state_url=REDIS_URL)  # type: ignore[arg-type]
    probe = (
        "import dramatiq_fairway.quickstart as old, dramatiq_fairway.demo.quickstart as new; "
        "assert old.count_primes is new.count_primes and old.broker is new.broker"
    )
    env = {**os.environ, **settings_env(settings)}
    command = [sys.executable, "-c", probe]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
