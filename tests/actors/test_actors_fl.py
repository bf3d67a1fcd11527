"""Federated learning actors: the real math (FedAvg, noise calibration), the quorum, both brokers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import numpy as np
import pytest
import redis
from dramatiq import Broker, Worker

from dramatiq_fairway.actors import fl
from dramatiq_fairway.actors.state_store import state_store
from dramatiq_fairway.errors import PermanentError
from dramatiq_fairway.failures.classify import qualified_name

from ..conftest import REDIS_URL
from ..support.helpers import wait_for
from ..unit.test_actors_fl import _trained

CLIENTS = [f"client-{i}" for i in range(5)]


@pytest.fixture
def actor_state(monkeypatch: pytest.MonkeyPatch, namespace: str, state_client: redis.Redis) -> Iterator[None]:
    """Make the module's actors use the test's namespace on the shared Redis."""
    monkeypatch.setenv("FAIRWAY_BROKER", "redis")
    monkeypatch.setenv("FAIRWAY_STATE_URL", REDIS_URL)
    monkeypatch.setenv("FAIRWAY_NAMESPACE", namespace)
    state_store.cache_clear()
    yield
    state_store.cache_clear()


def test_epsilon_budget_is_kept_per_client_and_exhausts(state_client: redis.Redis, namespace: str) -> None:
    ledger = fl.EpsilonLedger(state_client, namespace)
    assert ledger.spend("alice", "round-1", 1.0, budget=2.5) == pytest.approx(1.5)
    assert ledger.spend("alice", "round-1", 1.0, budget=2.5) == pytest.approx(1.5)  # same release: no charge
    assert ledger.spend("alice", "round-2", 1.0, budget=2.5) == pytest.approx(0.5)
    with pytest.raises(fl.BudgetExhausted) as raised:
        ledger.spend("alice", "round-3", 1.0, budget=2.5)
    assert isinstance(raised.value, PermanentError)
    assert ledger.spent("alice") == pytest.approx(2.0)
    assert ledger.spent("bob") == 0.0
    assert state_client.hgetall(f"{namespace}:fl:epsilon:alice") == {b"round-1": b"1.0", b"round-2": b"1.0"}


def test_round_waits_for_the_deadline_then_aggregates_the_quorum(state_client: redis.Redis, namespace: str) -> None:
    fed_round = fl.FederatedRound(state_client, namespace, "r1")
    config = fl.open_round(fed_round, CLIENTS, seed=5, now=1000.0, deadline_s=60)
    assert config.quorum_size == 4
    ledger = fl.EpsilonLedger(state_client, namespace)
    ready = [fl.train_for_round(fed_round, client, ledger, now=1010.0)[1] for client in CLIENTS[:4]]
    assert ready == [False, False, False, False]  # a quorum, but the deadline has not passed
    assert fl.aggregate_round(fed_round, now=1059.0) is None

    report = fl.aggregate_round(fed_round, now=1060.0)
    assert report is not None
    assert report.participants == CLIENTS[:4]
    assert report.missing == ["client-4"]
    np.testing.assert_allclose(report.weights, fl.federated_average(_trained(CLIENTS[:4], 5)), rtol=1e-9)

    # A straggler's late update is kept but changes nothing: the participants were frozen.
    fl.train_for_round(fed_round, "client-4", ledger, now=1070.0)
    assert fl.aggregate_round(fed_round, now=1080.0) == report


def test_round_aggregates_before_the_deadline_when_everyone_reported(state_client: redis.Redis, namespace: str) -> None:
    fed_round = fl.FederatedRound(state_client, namespace, "r2")
    fl.open_round(fed_round, CLIENTS, seed=5, now=0.0, deadline_s=60)
    ledger = fl.EpsilonLedger(state_client, namespace)
    ready = [fl.train_for_round(fed_round, client, ledger, now=1.0)[1] for client in CLIENTS]
    assert ready == [False, False, False, False, True]
    report = fl.aggregate_round(fed_round, now=1.0)
    assert report is not None
    assert report.missing == []
    assert report.weight_delta_norm > 0
    assert report.global_accuracy > report.mean_client_accuracy


def test_round_below_quorum_stays_open_after_the_deadline(state_client: redis.Redis, namespace: str) -> None:
    fed_round = fl.FederatedRound(state_client, namespace, "r3")
    fl.open_round(fed_round, CLIENTS, seed=5, now=0.0, deadline_s=10)
    ledger = fl.EpsilonLedger(state_client, namespace)
    for client in CLIENTS[:3]:
        fl.train_for_round(fed_round, client, ledger, now=1.0)
    assert fl.aggregate_round(fed_round, now=100.0) is None
    _, ready = fl.train_for_round(fed_round, CLIENTS[3], ledger, now=101.0)
    assert ready  # the quorum arrived after the deadline: aggregate now
    with pytest.raises(ValueError, match="already exists"):
        fl.open_round(fed_round, CLIENTS, seed=5, now=0.0, deadline_s=10)


def test_private_round_charges_the_budget_once_per_round(state_client: redis.Redis, namespace: str) -> None:
    privacy = fl.PrivacyConfig(epsilon=0.5, clip_norm=0.5, budget=1.0)
    ledger = fl.EpsilonLedger(state_client, namespace)
    for number in (1, 2):
        fed_round = fl.FederatedRound(state_client, namespace, f"dp-{number}")
        fl.open_round(fed_round, ["alice"], seed=1, now=0.0, deadline_s=10, privacy=privacy)
        update, ready = fl.train_for_round(fed_round, "alice", ledger, now=1.0)
        assert ready
        assert update.noise_scale == pytest.approx(1.0)
        retried, _ = fl.train_for_round(fed_round, "alice", ledger, now=2.0)
        assert retried == update  # the published update is reused, not noised again
    assert ledger.spent("alice") == pytest.approx(1.0)
    third = fl.FederatedRound(state_client, namespace, "dp-3")
    fl.open_round(third, ["alice"], seed=1, now=0.0, deadline_s=10, privacy=privacy)
    with pytest.raises(fl.BudgetExhausted):
        fl.train_for_round(third, "alice", ledger, now=1.0)


def test_health_check_reports_and_records(state_client: redis.Redis, namespace: str) -> None:
    report = fl.check_client("client-1", seed=2, now=123.0)
    assert report.healthy
    assert report.problems == []
    assert 0.0 < report.positive_fraction < 1.0
    fl.record_health(state_client, namespace, report)
    key = f"{namespace}:fl:health:client-1"
    assert state_client.hgetall(key) == {
        b"healthy": b"1",
        b"samples": str(report.samples).encode(),
        b"checked_at": b"123.0",
    }
    assert 0 < state_client.ttl(key) <= fl.HEALTH_TTL


def test_privatize_update_actor_charges_every_release(actor_state: None, namespace: str) -> None:
    privacy = {"epsilon": 1.0, "clip_norm": 1.0, "budget": 2.0}
    first = fl.privatize_update.fn("carol", "r1", [3.0, 4.0], privacy)
    second = fl.privatize_update.fn("carol", "r1", [3.0, 4.0], privacy)
    assert first["noise_scale"] == pytest.approx(1.0)
    assert (first["epsilon_remaining"], second["epsilon_remaining"]) == (pytest.approx(1.0), pytest.approx(0.0))
    assert first["delta"] != second["delta"]  # fresh noise each release
    with pytest.raises(PermanentError):
        fl.privatize_update.fn("carol", "r1", [3.0, 4.0], privacy)
    with pytest.raises(PermanentError, match="epsilon < 1"):
        fl.privatize_update.fn("dave", "r1", [1.0], {"epsilon": 2.0, "mechanism": "gaussian"})


def test_health_and_sync_actors(actor_state: None, namespace: str, state_client: redis.Redis, tmp_path: Path) -> None:
    report = fl.client_health_check.fn("client-0", 4)
    assert report["healthy"] is True
    assert state_client.exists(f"{namespace}:fl:health:client-0")
    stats = fl.sync_client_data.fn("client-0", 4, str(tmp_path))
    assert stats["verified"] is True
    assert Path(str(stats["path"])).is_file()


def test_a_failing_client_does_not_block_its_round(
    broker: Broker,
    queue_name: str,
    namespace: str,
    state_client: redis.Redis,
    start_worker: Callable[..., Worker],
) -> None:
    fed_round = fl.FederatedRound(state_client, namespace, "e2e")
    ledger = fl.EpsilonLedger(state_client, namespace)
    broken = "client-2"

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def train(client_id: str) -> None:
        if client_id == broken:
            raise RuntimeError("device went offline")
        _, ready = fl.train_for_round(fed_round, client_id, ledger, now=time.time())
        if ready:
            aggregate.send()

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def aggregate() -> None:
        fl.aggregate_round(fed_round, now=time.time())

    fl.open_round(fed_round, CLIENTS, seed=8, now=time.time(), deadline_s=1.0)
    for client in CLIENTS:
        train.send(client)
    aggregate.send_with_options(delay=1000)
    start_worker()

    report = wait_for(fed_round.report, timeout=20)
    assert report is not None
    assert report.participants == [c for c in CLIENTS if c != broken]
    assert report.missing == [broken]
    assert report.global_accuracy > report.mean_client_accuracy


def test_a_round_takes_quorum_and_deadline_from_the_settings(
    actor_state: None, monkeypatch: pytest.MonkeyPatch, state_client: redis.Redis, namespace: str
) -> None:
    monkeypatch.setenv("FAIRWAY_ACTORS__FL_QUORUM", "0.6")
    monkeypatch.setenv("FAIRWAY_ACTORS__FL_ROUND_DEADLINE", "42")
    config = fl.start_federated_round("from-settings", CLIENTS, seed=3)
    assert config.quorum == 0.6
    assert config.quorum_size == 3
    assert config.deadline - config.opened_at == pytest.approx(42)
    stored = fl.FederatedRound(state_client, namespace, "from-settings").config()
    assert stored == config
    # Explicit arguments still win over the settings.
    explicit = fl.start_federated_round("explicit", CLIENTS, seed=3, quorum=1.0, deadline_s=5)
    assert (explicit.quorum, explicit.deadline - explicit.opened_at) == (1.0, pytest.approx(5))


def test_split_modules_keep_the_error_name_and_keys(namespace: str, state_client: redis.Redis) -> None:
    # Dead letters and retry rules name errors by module path; rounds already in Redis keep their keys.
    assert qualified_name(fl.BudgetExhausted) == "dramatiq_fairway.actors.fl.BudgetExhausted"
    fed_round = fl.FederatedRound(state_client, namespace, "r1")
    assert (fed_round.key, fed_round.updates_key) == (
        f"{namespace}:fl:round:{{r1}}",
        f"{namespace}:fl:round:{{r1}}:updates",
    )
    assert fl.EpsilonLedger(state_client, namespace).key("c") == f"{namespace}:fl:epsilon:c"
