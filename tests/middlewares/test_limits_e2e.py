"""Acceptance of per-tenant limits (docs/limits.md) with the real ``dramatiq`` command, 2 processes x 4
threads, on real Redis and real RabbitMQ. The jobs (tests/support/limits_app.py) record their own starts
and how many jobs of their tenant ran at that instant, on the Redis server's clock."""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Actor, Broker

from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.cli import limits as limits_cli
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.dead_letters import DeadLetterStore
from dramatiq_fairway.store.limits import TenantLimits

from ..support.fair_support import delete_namespace
from ..support.helpers import dramatiq_command, settings_env, wait_for

pytestmark = pytest.mark.chaos
# The fixtures are what these tests are about; pytest passes them by name.
# ruff: noqa: PLR0917

Start = tuple[int, int, int]


@pytest.fixture
def job(broker: Broker, queue_name: str, state_client: redis.Redis, namespace: str) -> Iterator[Actor[..., None]]:
    """The producer's view of tests.support.limits_app's actor; the test's broker-side keys are deleted after."""

    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name="job", max_retries=3)
    def job(tenant: str, index: int, seconds: float = 0.05, first_seconds: float = 0.0) -> None:
        raise AssertionError("runs in the dramatiq command only")

    yield job
    delete_namespace(state_client, namespace)


def command_env(settings: Settings, queue_name: str, limits: dict[str, Any]) -> dict[str, str]:
    return {
        **settings_env(settings),
        "FAIRWAY_TEST_QUEUE": queue_name,
        "FAIRWAY_LIMITS__TENANTS": json.dumps(limits),
        "FAIRWAY_METRICS__PORT": "0",
    }


def starts(client: redis.Redis, namespace: str, tenant: str) -> list[Start]:
    """Recorded starts of ``tenant``: (server ms, its jobs running then, pid)."""
    return [tuple(json.loads(raw)) for raw in client.lrange(f"{namespace}:test:starts:{tenant}", 0, -1)]  # type: ignore[misc]


def done_count(client: redis.Redis, namespace: str) -> Callable[[], int]:
    return lambda: int(client.llen(f"{namespace}:test:done"))


def test_capped_tenant_runs_at_most_two_while_b_uses_the_other_slots(
    job: Actor[..., None],
    settings: Settings,
    queue_name: str,
    namespace: str,
    state_client: redis.Redis,
    short_tmp: Path,
) -> None:
    for index in range(200):
        job.send_with_options(args=("a", index), tenant="a")
        job.send_with_options(args=("b", index), tenant="b")
    env = command_env(settings, queue_name, {"a": {"max_concurrency": 2}})
    with dramatiq_command("tests.support.limits_app", env, processes=2, threads=4, log_file=short_tmp / "worker.log"):
        wait_for(lambda: done_count(state_client, namespace)() >= 400, timeout=180, interval=0.5)
    a, b = starts(state_client, namespace, "a"), starts(state_client, namespace, "b")
    assert max(running for _, running, _ in a) == 2
    assert max(running for _, running, _ in b) >= 3
    # Every job ran exactly once (a retry would run one again) and nothing was dead-lettered.
    assert (len(a), len(b)) == (200, 200)
    assert sorted(state_client.lrange(f"{namespace}:test:done", 0, -1)) == sorted(
        f"{tenant}:{index}".encode() for tenant in "ab" for index in range(200)
    )
    assert DeadLetterStore(settings, client=state_client).count() == 0


def test_rate_limited_tenant_starts_no_more_than_rate_plus_burst_per_second(
    job: Actor[..., None],
    settings: Settings,
    queue_name: str,
    namespace: str,
    state_client: redis.Redis,
    short_tmp: Path,
) -> None:
    for index in range(60):
        job.send_with_options(args=("a", index, 0.0), tenant="a")
    env = command_env(settings, queue_name, {"a": {"rate": 5, "burst": 5}})
    with dramatiq_command("tests.support.limits_app", env, processes=2, threads=4, log_file=short_tmp / "worker.log"):
        wait_for(lambda: done_count(state_client, namespace)() >= 60, timeout=120, interval=0.5)
    times = sorted(ms for ms, _, _ in starts(state_client, namespace, "a"))
    assert len(times) == 60
    busiest = max(sum(1 for other in times if start <= other < start + 1000) for start in times)
    assert busiest <= 5 + 5


def test_killed_worker_gives_its_slots_back(
    job: Actor[..., None],
    broker: Broker,
    settings: Settings,
    queue_name: str,
    namespace: str,
    state_client: redis.Redis,
    short_tmp: Path,
) -> None:
    env = command_env(settings, queue_name, {"a": {"max_concurrency": 2}})
    for index in range(2):
        job.send_with_options(args=("a", index), kwargs={"first_seconds": 60.0}, tenant="a")
    with dramatiq_command(
        "tests.support.limits_app", env, processes=2, threads=4, log_file=short_tmp / "one.log"
    ) as first:
        wait_for(lambda: len(starts(state_client, namespace, "a")) == 2, timeout=60)
        for pid in {pid for _, _, pid in starts(state_client, namespace, "a")}:
            os.kill(pid, signal.SIGKILL)
        first.wait(timeout=60)
    if isinstance(broker, FairRedisBroker):
        assert broker.tenant_limits.in_flight(queue_name) == {"a": 2}  # held by the dead worker
    # On RabbitMQ the dead connection's messages are redelivered at once, and their leases (keyed by
    # message id) are taken over by the worker that runs them again.
    state_client.delete(f"{namespace}:test:starts:a", f"{namespace}:test:running:a")
    for index in range(2, 22):
        job.send_with_options(args=("a", index, 0.3), tenant="a")
    with dramatiq_command("tests.support.limits_app", env, processes=2, threads=4, log_file=short_tmp / "two.log"):
        wait_for(lambda: done_count(state_client, namespace)() >= 22, timeout=150, interval=0.5)
    done = {raw.decode() for raw in state_client.lrange(f"{namespace}:test:done", 0, -1)}
    assert done == {f"a:{index}" for index in range(22)}
    assert max(running for _, running, _ in starts(state_client, namespace, "a")) == 2  # at its cap, not cap - 2
    assert TenantLimits.from_settings(settings).in_flight(queue_name) == {}  # no slot left taken


def test_limits_set_takes_effect_on_running_workers_within_a_second(
    job: Actor[..., None],
    settings: Settings,
    queue_name: str,
    namespace: str,
    state_client: redis.Redis,
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for index in range(300):
        job.send_with_options(args=("a", index, 0.1), tenant="a")
    env = command_env(settings, queue_name, {"a": {"max_concurrency": 4}})
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with dramatiq_command("tests.support.limits_app", env, processes=2, threads=4, log_file=short_tmp / "worker.log"):
        wait_for(lambda: any(running == 4 for _, running, _ in starts(state_client, namespace, "a")), timeout=60)
        parser = argparse.ArgumentParser()
        limits_cli.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["limits", "set", "a", "--max-concurrency", "1", "--json"])
        args.func(args)
        assert json.loads(capsys.readouterr().out)["max_concurrency"] == 1
        seconds, micros = state_client.time()
        changed_at = seconds * 1000 + micros // 1000
        wait_for(
            lambda: sum(ms > changed_at + 1000 for ms, _, _ in starts(state_client, namespace, "a")) >= 5, timeout=60
        )
    later = [running for ms, running, _ in starts(state_client, namespace, "a") if ms > changed_at + 1000]
    assert max(later) == 1
