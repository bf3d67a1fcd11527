"""``fairway queues``: depth per queue x level x tenant on both brokers, with real jobs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq import Broker, Worker

from dramatiq_fairway.brokers.rabbitmq import FairwayRabbitmqBroker
from dramatiq_fairway.cli import main
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.dead_letters import DeadLetterStore

from ..brokers.test_rabbitmq_fair import delete_level_queues
from ..support.helpers import settings_env, wait_for


@pytest.fixture
def fairway(
    broker: Broker, settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., str]]:
    """Run ``fairway ARGS`` in this process with the test's settings; its stdout."""
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> str:
        capsys.readouterr()
        assert main(list(argv)) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    yield run
    delete_level_queues(broker, settings)


@pytest.fixture
def filled(broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]) -> None:
    """One dead job (acme, NORMAL), then 3 ready acme NORMAL, 2 ready zed BATCH and 1 delayed acme NORMAL."""

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def boom() -> None:
        raise ValueError("no")

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def wait() -> None:
        pass

    dead = boom.send_with_options(tenant="acme")
    worker = start_worker()
    store = DeadLetterStore(settings)
    wait_for(lambda: store.get(dead.message_id))
    worker.stop()
    for _ in range(3):
        wait.send_with_options(tenant="acme")
    for _ in range(2):
        wait.send_with_options(tenant="zed", priority_level="batch")
    wait.send_with_options(tenant="acme", delay=3_600_000)


@pytest.mark.usefixtures("filled")
def test_queues_json_has_one_row_per_level_and_tenant(
    broker: Broker, queue_name: str, fairway: Callable[..., str]
) -> None:
    rows: list[dict[str, Any]] = json.loads(fairway("queues", "--json"))
    assert all(
        list(row)
        == [
            "queue",
            "priority_level",
            "tenant",
            "ready",
            "delayed",
            "held",
            "in_flight",
            "dead",
            "in_flight_cap",
            "rate",
        ]
        for row in rows
    )
    assert {row["queue"] for row in rows} == {queue_name}
    table = {(row["priority_level"], row["tenant"]): row for row in rows}
    if isinstance(broker, FairwayRabbitmqBroker):
        # Ready per tenant from the state store's counts; the delay queue holds every level and tenant.
        assert table == {
            ("NORMAL", "acme"): row_of(queue_name, "NORMAL", "acme", ready=3, dead=1, in_flight=None),
            ("BATCH", "zed"): row_of(queue_name, "BATCH", "zed", ready=2, in_flight=None),
            ("*", "*"): row_of(queue_name, "*", "*", delayed=1, in_flight=None),
        }
    else:
        assert table == {
            ("NORMAL", "acme"): row_of(queue_name, "NORMAL", "acme", ready=3, delayed=1, dead=1),
            ("BATCH", "zed"): row_of(queue_name, "BATCH", "zed", ready=2),
        }


@pytest.mark.usefixtures("filled")
def test_queues_table_for_people_names_levels_and_tenants(
    broker: Broker, queue_name: str, fairway: Callable[..., str]
) -> None:
    out = fairway("queues", queue_name)
    for word in ("priority_level", "NORMAL", "BATCH", queue_name):
        assert word in out
    assert ("n/a" in out) == isinstance(broker, FairwayRabbitmqBroker)
    assert "zed" in out


def test_queues_of_an_empty_namespace_says_so(fairway: Callable[..., str]) -> None:
    assert json.loads(fairway("queues", "--json")) == []
    assert "no queued" in fairway("queues")


def row_of(queue: str, level: str, tenant: str, **counts: int | None) -> dict[str, Any]:
    return {
        "queue": queue,
        "priority_level": level,
        "tenant": tenant,
        "ready": 0,
        "delayed": 0,
        "held": 0,
        "in_flight": 0,
        "dead": 0,
        "in_flight_cap": None,
        "rate": None,
        **counts,
    }
