"""Federated learning on queue ``fl``: local training, FedAvg, differential privacy, client upkeep.

The actors and the producer's entry points. The computation (shards, training, FedAvg, privacy)
is in ``fl_model.py``, the rounds, epsilon ledger and health records in the state store in
``fl_state.py``; both are re-exported here. A round runs ``train_local_model`` on K clients, then
``aggregate_models`` once the round is ready (``fl_state.py`` says when). Models travel as JSON
lists of floats, never pickles.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dramatiq
import numpy as np
from pydantic import ValidationError

from ..errors import PermanentError

# The computation and the state, re-exported: code and tests import them from here.
from .fl_model import (
    DEFAULT_EPSILON_BUDGET,
    DEFAULT_QUORUM,
    FEATURES,
    MIN_HEALTHY_SAMPLES,
    SYNC_CHUNK_BYTES,
    ConvergenceReport,
    HealthReport,
    LocalUpdate,
    Mechanism,
    PrivacyConfig,
    RoundConfig,
    Shard,
    TransferStats,
    Vector,
    check_client,
    client_shard,
    clip,
    convergence_report,
    evaluate,
    federated_average,
    held_out_set,
    noise_scale,
    privatize,
    quorum_size,
    round_ready,
    shard_bytes,
    sync_shard,
    train_logistic_regression,
)
from .fl_state import (
    HEALTH_TTL,
    ROUND_TTL,
    BudgetExhausted,
    EpsilonLedger,
    FederatedRound,
    aggregate_round,
    open_round,
    record_health,
    train_for_round,
)
from .settings import load_actor_settings
from .state_store import state_store

__all__ = [
    "DEFAULT_EPSILON_BUDGET",
    "DEFAULT_QUORUM",
    "FEATURES",
    "HEALTH_TTL",
    "MIN_HEALTHY_SAMPLES",
    "QUEUE",
    "ROUND_TTL",
    "SYNC_CHUNK_BYTES",
    "BudgetExhausted",
    "ConvergenceReport",
    "EpsilonLedger",
    "FederatedRound",
    "HealthReport",
    "LocalUpdate",
    "Mechanism",
    "PrivacyConfig",
    "RoundConfig",
    "Shard",
    "TransferStats",
    "Vector",
    "aggregate_models",
    "aggregate_round",
    "check_client",
    "client_health_check",
    "client_shard",
    "clip",
    "convergence_report",
    "evaluate",
    "federated_average",
    "held_out_set",
    "noise_scale",
    "open_round",
    "privatize",
    "privatize_update",
    "quorum_size",
    "record_health",
    "round_ready",
    "round_report",
    "shard_bytes",
    "start_federated_round",
    "sync_client_data",
    "sync_shard",
    "train_for_round",
    "train_local_model",
    "train_logistic_regression",
]

QUEUE = "fl"


# --- Actors ------------------------------------------------------------------------------------


def _round(round_id: str) -> FederatedRound:
    client, namespace = state_store()
    return FederatedRound(client, namespace, round_id)


def round_report(round_id: str) -> ConvergenceReport | None:
    """The round's convergence report once it aggregated, else None (for producers that wait)."""
    return _round(round_id).report()


def start_federated_round(
    round_id: str,
    clients: Sequence[str],
    *,
    seed: int,
    deadline_s: float | None = None,
    global_weights: Sequence[float] | None = None,
    quorum: float | None = None,
    privacy: PrivacyConfig | None = None,
    options: Mapping[str, Any] | None = None,
) -> RoundConfig:
    """Open a round and send its jobs: one training per client, and the deadline check.

    ``deadline_s`` and ``quorum`` default to ``FAIRWAY_ACTORS__FL_ROUND_DEADLINE`` and
    ``__FL_QUORUM``; ``options`` (priority, tenant, ...) go on every message of the round.
    """
    settings = load_actor_settings()
    deadline_s = settings.fl_round_deadline if deadline_s is None else deadline_s
    config = open_round(
        _round(round_id),
        clients,
        seed=seed,
        now=time.time(),
        deadline_s=deadline_s,
        global_weights=global_weights,
        quorum=settings.fl_quorum if quorum is None else quorum,
        privacy=privacy,
    )
    options = dict(options or {})
    for client_id in clients:
        train_local_model.send_with_options(args=(round_id, client_id), **options)
    aggregate_models.send_with_options(args=(round_id,), delay=int(deadline_s * 1000), **options)
    return config


@dramatiq.actor(queue_name=QUEUE, actor_name="fl.train_local_model")
def train_local_model(round_id: str, client_id: str) -> dict[str, object]:
    client, namespace = state_store()
    update, ready = train_for_round(_round(round_id), client_id, EpsilonLedger(client, namespace), time.time())
    if ready:
        aggregate_models.send(round_id)
    return update.model_dump()


@dramatiq.actor(queue_name=QUEUE, actor_name="fl.aggregate_models")
def aggregate_models(round_id: str) -> dict[str, object] | None:
    """Runs when the last client reports and at the deadline; whichever finds the round ready wins."""
    report = aggregate_round(_round(round_id), time.time())
    return None if report is None else report.model_dump()


@dramatiq.actor(queue_name=QUEUE, actor_name="fl.privatize_update")
def privatize_update(client_id: str, round_id: str, delta: list[float], privacy: dict[str, Any]) -> dict[str, object]:
    """Clip and noise a model delta for release, charging the client's epsilon budget.

    Every call is a new release with fresh noise, so every call is charged (a retry too: erring
    on the side of spending more is safe, spending less is not).
    """
    try:
        config = PrivacyConfig.model_validate(privacy)
    except ValidationError as exc:
        raise PermanentError(f"invalid privacy settings: {exc.errors()[0]['msg']}") from None
    client, namespace = state_store()
    release_id = f"{round_id}:{uuid.uuid4().hex}"
    remaining = EpsilonLedger(client, namespace).spend(client_id, release_id, config.epsilon, config.budget)
    noisy, scale = privatize(np.asarray(delta, dtype=np.float64), config, np.random.default_rng())
    return {"delta": noisy.tolist(), "noise_scale": scale, "epsilon_remaining": remaining}


@dramatiq.actor(queue_name=QUEUE, actor_name="fl.client_health_check")
def client_health_check(client_id: str, seed: int) -> dict[str, object]:
    client, namespace = state_store()
    report = check_client(client_id, seed, time.time())
    record_health(client, namespace, report)
    return report.model_dump()


@dramatiq.actor(queue_name=QUEUE, actor_name="fl.sync_client_data")
def sync_client_data(client_id: str, seed: int, target_dir: str) -> dict[str, object]:
    return sync_shard(client_id, seed, Path(target_dir)).model_dump()
