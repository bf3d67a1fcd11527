"""Federated learning's state in the state store: rounds, the epsilon ledger, client health.

A round runs ``train_local_model`` on K clients, then ``aggregate_models`` once the round is ready:
every client reported, or the deadline passed and a quorum (default 80 %) did. The quorum lives in
the state store, not in Dramatiq group callbacks, which need every member to succeed: here one
failing client cannot block its round.

Keys (names in ``store/actor_state.py``; all expire ``ROUND_TTL`` / ``HEALTH_TTL`` seconds after
their last write, except the epsilon ledger, which must outlive rounds to bound a client's total
privacy loss):

    {namespace}:fl:round:{<round>}           hash: config (RoundConfig JSON), participants
                                             (JSON list, frozen once), report (ConvergenceReport)
    {namespace}:fl:round:{<round>}:updates   hash: client id -> LocalUpdate JSON
    {namespace}:fl:epsilon:{client}          hash: release id -> epsilon spent by that release
    {namespace}:fl:health:{client}           hash: last HealthReport fields

The two round keys share the hash tag ``{<round>}`` so that their MULTI works on Redis Cluster.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

import numpy as np
import redis

from ..errors import PermanentError
from ..store.actor_state import fl_epsilon_key, fl_health_key, fl_round_key
from .fl_model import (
    DEFAULT_QUORUM,
    FEATURES,
    ConvergenceReport,
    HealthReport,
    LocalUpdate,
    PrivacyConfig,
    RoundConfig,
    client_shard,
    convergence_report,
    held_out_set,
    privatize,
    round_ready,
    train_logistic_regression,
)

ROUND_TTL = 86_400
HEALTH_TTL = 3_600


class BudgetExhausted(PermanentError):
    """Releasing one more update would take a client past its epsilon budget."""

    # Dead letters, metrics and retry rules name an error by its module path: keep the one it had
    # when it lived in fl.py (which re-exports it), so existing records and rules still match.
    __module__ = "dramatiq_fairway.actors.fl"


class EpsilonLedger:
    """Epsilon spent per client, summed over releases (sequential composition), in the state store.

    Each release has an id; recording the same id again (a retried job whose update was never
    published) costs nothing more. A round's release id is the round id.
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def key(self, client_id: str) -> str:
        return fl_epsilon_key(self.namespace, client_id)

    def spent(self, client_id: str) -> float:
        return sum(float(value) for value in cast(list[bytes], self.client.hvals(self.key(client_id))))

    def spend(self, client_id: str, release_id: str, epsilon: float, budget: float) -> float:
        """Record ``epsilon`` for this release and return what remains; ``BudgetExhausted`` if over."""
        key = self.key(client_id)

        def attempt(pipe: redis.client.Pipeline) -> float:
            entries = cast(dict[bytes, bytes], pipe.hgetall(key))
            before = sum(float(value) for field, value in entries.items() if field.decode() != release_id)
            if before + epsilon > budget + 1e-12:
                raise BudgetExhausted(
                    f"client {client_id!r} has spent epsilon {before:g} of {budget:g}; "
                    f"release {release_id!r} needs {epsilon:g} more"
                )
            pipe.multi()
            pipe.hset(key, release_id, repr(epsilon))
            return budget - before - epsilon

        return cast(float, self.client.transaction(attempt, key, value_from_callable=True))


class FederatedRound:
    """One round's shared state: its config, the updates that arrived, the frozen participants."""

    def __init__(self, client: redis.Redis, namespace: str, round_id: str) -> None:
        self.client = client
        self.round_id = round_id
        self.key = fl_round_key(namespace, round_id)
        self.updates_key = f"{self.key}:updates"

    def open(self, config: RoundConfig) -> bool:
        """Store the config; False (and the first config kept) if this round id was opened before."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self.key, "config", config.model_dump_json())
            pipe.expire(self.key, ROUND_TTL)
            return bool(pipe.execute()[0])

    def config(self) -> RoundConfig:
        raw = cast(bytes | None, self.client.hget(self.key, "config"))
        if raw is None:
            raise PermanentError(f"federated round {self.round_id!r} was never opened or has expired")
        return RoundConfig.model_validate_json(raw)

    def submit(self, update: LocalUpdate, now: float) -> bool:
        """Record a client's update; True when the round is ready to aggregate after it."""
        config = self.config()
        if update.client not in config.clients:
            raise PermanentError(f"client {update.client!r} is not part of round {self.round_id!r}")
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.updates_key, update.client, update.model_dump_json())
            pipe.expire(self.updates_key, ROUND_TTL)
            pipe.hlen(self.updates_key)
            reported = int(pipe.execute()[-1])
        return round_ready(config, reported, now)

    def update_of(self, client_id: str) -> LocalUpdate | None:
        raw = cast(bytes | None, self.client.hget(self.updates_key, client_id))
        return None if raw is None else LocalUpdate.model_validate_json(raw)

    def updates(self) -> dict[str, LocalUpdate]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.updates_key))
        return {client.decode(): LocalUpdate.model_validate_json(value) for client, value in raw.items()}

    def freeze_participants(self, now: float) -> list[str] | None:
        """The clients this round aggregates, fixed by the first caller that finds it ready.

        Later callers (a retry, the deadline message racing the last client) get the same list,
        so aggregation is deterministic however often it runs. None while the round is not ready.
        """
        frozen = cast(bytes | None, self.client.hget(self.key, "participants"))
        if frozen is None:
            reported = sorted(cast(list[bytes], self.client.hkeys(self.updates_key)))
            if not round_ready(self.config(), len(reported), now):
                return None
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hsetnx(self.key, "participants", json.dumps([client.decode() for client in reported]))
                pipe.hget(self.key, "participants")
                frozen = cast(bytes, pipe.execute()[-1])
        return cast(list[str], json.loads(frozen))

    def report(self) -> ConvergenceReport | None:
        raw = cast(bytes | None, self.client.hget(self.key, "report"))
        return None if raw is None else ConvergenceReport.model_validate_json(raw)

    def save_report(self, report: ConvergenceReport) -> None:
        self.client.hset(self.key, "report", report.model_dump_json())


def open_round(
    fed_round: FederatedRound,
    clients: Sequence[str],
    *,
    seed: int,
    now: float,
    deadline_s: float,
    global_weights: Sequence[float] | None = None,
    quorum: float = DEFAULT_QUORUM,
    privacy: PrivacyConfig | None = None,
) -> RoundConfig:
    """Store a new round's config; ``ValueError`` if the round id is taken."""
    config = RoundConfig(
        round_id=fed_round.round_id,
        clients=list(clients),
        seed=seed,
        opened_at=now,
        global_weights=list(global_weights) if global_weights is not None else [0.0] * (FEATURES + 1),
        quorum=quorum,
        deadline=now + deadline_s,
        privacy=privacy,
    )
    if not fed_round.open(config):
        raise ValueError(f"federated round {fed_round.round_id!r} already exists")
    return config


def train_for_round(
    fed_round: FederatedRound, client_id: str, ledger: EpsilonLedger, now: float
) -> tuple[LocalUpdate, bool]:
    """Train the client's model from the round's global weights, privatize it if the round says
    so, and submit it. Returns the update and whether the round became ready.

    A client whose update is already in (a retry after the submit) resubmits that same update:
    publishing a second noisy copy would spend its privacy budget twice.
    """
    published = fed_round.update_of(client_id)
    if published is not None:
        return published, fed_round.submit(published, now)
    config = fed_round.config()
    initial = np.asarray(config.global_weights, dtype=np.float64)
    update = train_logistic_regression(
        client_shard(client_id, config.seed),
        initial,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        l2=config.l2,
    )
    if config.privacy is not None:
        ledger.spend(client_id, config.round_id, config.privacy.epsilon, config.privacy.budget)
        noisy, scale = privatize(np.asarray(update.weights) - initial, config.privacy, np.random.default_rng())
        update = update.model_copy(update={"weights": (initial + noisy).tolist(), "noise_scale": scale})
    return update, fed_round.submit(update, now)


def aggregate_round(fed_round: FederatedRound, now: float) -> ConvergenceReport | None:
    """FedAvg over the frozen participants; None while the round is not ready yet."""
    existing = fed_round.report()
    if existing is not None:
        return existing
    participants = fed_round.freeze_participants(now)
    if participants is None:
        return None
    config = fed_round.config()
    updates = fed_round.updates()
    report = convergence_report(config, [updates[client] for client in participants], held_out_set(config.seed))
    fed_round.save_report(report)
    return report


def record_health(client: redis.Redis, namespace: str, report: HealthReport) -> None:
    key = fl_health_key(namespace, report.client)
    fields: dict[str | bytes, int | str] = {
        "healthy": int(report.healthy),
        "samples": report.samples,
        "checked_at": repr(report.checked_at),
    }
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, HEALTH_TTL)
        pipe.execute()
