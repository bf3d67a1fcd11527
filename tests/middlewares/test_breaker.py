"""CircuitBreaker on a real broker: jobs held back and released, and the ``fairway breakers`` verbs.
The middleware's decisions with an injected clock (StubBroker, pure logic) are in tests/unit/test_breaker.py.

Holding needs fairway's consumer (FairRedisBroker, FairwayRabbitmqBroker: what ``setup()``
builds); the real-broker tests run on both. The state store is the real shared Redis, namespaced
per test. The 4 x 4 ``dramatiq`` command runs are in ``test_breaker_e2e.py``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Broker, Worker
from dramatiq.middleware import CurrentMessage

from dramatiq_fairway import cli
from dramatiq_fairway.cli import breakers as breakers_cli
from dramatiq_fairway.errors import RateLimited, TransientError
from dramatiq_fairway.middlewares.breaker import (
    BREAKER_HELD_SINCE,
    CACHE_TTL,
)
from dramatiq_fairway.middlewares.consumer_hooks import HELD_SINCE
from dramatiq_fairway.settings import BreakerSettings, Settings
from dramatiq_fairway.store import scripts
from dramatiq_fairway.store.breakers import RedisBreakerStore
from dramatiq_fairway.store.dead_letters import DeadLetterStore
from dramatiq_fairway.store.scripts import ScriptCall

from ..conftest import REDIS_URL, SINGLE_REDIS_URL
from ..support.helpers import settings_env, wait_for

# On a real broker: jobs are held back, released, dead-lettered only when held too long.

E2E_BREAKER = BreakerSettings(minimum_calls=2, window_size=2, open_duration=1.0, half_open_max_calls=1)


@pytest.fixture
def settings(broker_kind: str, namespace: str, short_tmp: Path, state_client: redis.Redis) -> Settings:
    return Settings(
        broker=broker_kind,  # type: ignore[arg-type]
        namespace=namespace,
        state_url=REDIS_URL,
        data_dir=short_tmp,
        breaker=E2E_BREAKER,
    )


class Dependency:
    """What the actors call: records every call; fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.calls: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def call(self, name: str) -> None:
        with self.lock:
            self.calls.append((time.time(), name))
        if self.down:
            raise TransientError("dependency down")


def run_options() -> dict[str, Any]:
    return dict(CurrentMessage.get_current_message().options)


def test_an_open_breaker_holds_jobs_without_retries_until_it_closes(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    broker.add_middleware(CurrentMessage())
    dependency = Dependency()
    finished: dict[str, dict[str, Any]] = {}

    @dramatiq.actor(broker=broker, queue_name=queue_name, breaker="dep", max_retries=3)
    def fetch(name: str) -> None:
        dependency.call(name)
        finished[name] = run_options()

    store = RedisBreakerStore.from_settings(settings)
    dependency.down = True
    start_worker(threads=2)
    for name in ("f1", "f2"):
        fetch.send_with_options(args=(name,), max_retries=0)
    opened = wait_for(lambda: (s := store.get("dep")) is not None and s.state == "open" and s)
    assert (opened.failures, opened.calls) == (2, 2)

    dependency.down = False
    for i in range(5):
        fetch.send(f"j{i}")
    wait_for(lambda: len(finished) == 5, timeout=20)
    late = [at for at, name in dependency.calls if name.startswith("j")]
    assert min(late) >= opened.retry_at  # type: ignore[operator]
    assert all(options.get("retries", 0) == 0 for options in finished.values())
    assert all(HELD_SINCE in options for options in finished.values())
    assert not any(BREAKER_HELD_SINCE in options for options in finished.values())
    assert store.get("dep").state == "closed"  # type: ignore[union-attr]
    # The two real failures were dead-lettered; no held job was.
    dead = DeadLetterStore(settings).list()
    assert sorted(record.args[0] for record in dead) == ["f1", "f2"]


def test_rate_limited_stops_every_worker_calling_the_dependency_for_retry_after(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    dependency = Dependency()
    limited_at: list[float] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, breaker="api")
    def call(name: str) -> None:
        dependency.call(name)
        if name == "first":
            limited_at.append(time.time())
            raise RateLimited(retry_after=2)

    start_worker(threads=4)
    call.send("first")
    wait_for(lambda: limited_at)
    store = RedisBreakerStore.from_settings(settings)
    wait_for(lambda: (state := store.get("api")) is not None and state.state == "open")
    for i in range(6):
        call.send(f"n{i}")
    wait_for(lambda: len(dependency.calls) >= 8, timeout=20)
    others = sorted(at for at, name in dependency.calls if name.startswith("n"))
    assert others[0] >= limited_at[0] + 2
    # The retry of "first" waited too (its retry is a job of the same breaker).
    assert sorted(at for at, name in dependency.calls if name == "first")[1] >= limited_at[0] + 2


def test_a_job_held_longer_than_max_hold_is_dead_lettered_as_held_too_long(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, breaker="dep")
    def job() -> None:
        ran.append("ran")

    RedisBreakerStore.from_settings(settings).force_open("dep")
    held_since = int((time.time() - settings.breaker.max_hold - 1) * 1000)
    message = job.send_with_options(**{BREAKER_HELD_SINCE: held_since})
    start_worker()
    dead_letters = DeadLetterStore(settings)
    record = wait_for(lambda: dead_letters.get(message.message_id))
    assert record.reason == "held_too_long"
    assert record.error_type.endswith("HeldTooLong")
    assert ran == []


# The `fairway breakers` verbs (over the state store only).


def test_cli_lists_forces_open_closes_and_resets(
    namespace: str, short_tmp: Path, state_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    settings = Settings(namespace=namespace, state_url=REDIS_URL, data_dir=short_tmp)
    assert breakers_cli in cli.VERB_MODULES
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> Any:
        assert cli.main([*argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert run("breakers", "list") == []
    opened = run("breakers", "open", "semantic_scholar")
    assert opened["state"] == "open"
    assert opened["retry_at"] is None
    assert opened["opened_at"].endswith("Z")
    assert run("breakers", "list") == [opened]
    assert set(opened) == {"key", "state", "failures", "calls", "opened_at", "retry_at"}
    assert run("breakers", "close", "semantic_scholar")["state"] == "closed"
    assert run("breakers", "reset", "semantic_scholar")["state"] == "closed"
    assert run("breakers", "list") == []
    assert cli.main(["breakers", "close", "nope"]) == 1
    assert "no breaker named 'nope'" in capsys.readouterr().err


@pytest.mark.usefixtures("state_client")
@pytest.mark.parametrize("key", ["", "  "])
def test_cli_refuses_to_open_a_breaker_with_a_blank_key(
    key: str, namespace: str, short_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    settings = Settings(namespace=namespace, state_url=REDIS_URL, data_dir=short_tmp)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert cli.main(["breakers", "open", key]) == 1
    err = capsys.readouterr().err
    # The CLI folds runs of white space in a message to one space, the value's quotes included.
    assert err.strip().splitlines() == [f"fairway: key: a breaker key cannot be empty or blank ({key[:1]!r})"]
    assert RedisBreakerStore.from_settings(settings).list() == []
    with pytest.raises(ValueError, match="key: a breaker key cannot be empty"):
        RedisBreakerStore.from_settings(settings).force_open(key)


def test_cli_logs_one_line_per_transition(
    namespace: str, state_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dramatiq_fairway.store.breakers")
    store = RedisBreakerStore(state_client, namespace)
    store.force_open("k")
    store.force_open("k")
    store.close("k")
    assert [r.getMessage().split(":")[1].split("(")[0].strip() for r in caplog.records] == [
        "closed -> open",
        "open -> closed",
    ]


class CountingRedis(redis.Redis):
    """A state-store client that keeps every command it sends (the breaker store's round trips)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(args)
        return super().execute_command(*args, **options)


def test_the_hot_path_costs_no_call_without_a_breaker_and_one_finish_call_with_a_closed_one(  # noqa: PLR0917 (fixtures)
    broker: Broker,
    settings: Settings,
    queue_name: str,
    start_worker: Callable[..., Worker],
    state_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One server's round trips are counted (the state store may be another server than the broker).
    client = CountingRedis(connection_pool=redis.ConnectionPool.from_url(SINGLE_REDIS_URL))
    monkeypatch.setattr(RedisBreakerStore, "from_settings", lambda s: RedisBreakerStore(client, s.namespace))
    # Script calls go in pipelines packed by store/scripts.py: keep each call of the client's too.
    run = scripts._run

    def counted(to: redis.Redis, calls: list[ScriptCall], replicas: int, **options: Any) -> list[Any]:
        if to is client:
            client.sent += [("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args) for c in calls]
        return run(to, calls, replicas, **options)

    monkeypatch.setattr(scripts, "_run", counted)
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def free(n: int) -> None:
        ran.append("free")

    @dramatiq.actor(broker=broker, queue_name=queue_name, breaker="dep")
    def guarded(n: int) -> None:
        ran.append("guarded")

    jobs = 200
    for n in range(jobs):
        free.send(n)
    start_worker(threads=4)
    wait_for(lambda: len(ran) == jobs, timeout=30)
    assert client.sent == []

    started = time.monotonic()
    for n in range(jobs):
        guarded.send(n)
    wait_for(lambda: len(ran) == 2 * jobs, timeout=30)
    elapsed = time.monotonic() - started
    calls = [
        args[5].decode() if isinstance(args[5], bytes) else args[5] for args in client.sent if args[0] == "EVALSHA"
    ]
    records, admits = calls.count("record"), calls.count("admit")
    # At most one call when a job finishes; a start asks the store only when this process heard
    # nothing of the breaker for CACHE_TTL (here: the first job).
    assert 1 <= records <= jobs
    assert 1 <= admits <= 1 + elapsed / CACHE_TTL
    other = [args[0] for args in client.sent if args[0] != "EVALSHA"]
    assert set(other) <= {"SADD", "SCRIPT LOAD"}
    state = RedisBreakerStore(client, settings.namespace).get("dep")
    assert state is not None
    assert (state.state, state.calls) == ("closed", settings.breaker.window_size)
