"""Federated learning on queue ``fl``: local training, FedAvg, differential privacy, client upkeep.

Every client owns a synthetic, non-IID shard of one logistic-regression task, generated from the
client id and a seed (so any worker can rebuild it, and a retry sees the same data). A round runs
``train_local_model`` on K clients, then ``aggregate_models`` once the round is ready: every client
reported, or the deadline passed and a quorum (default 80 %) did. The quorum lives in the state
store, not in Dramatiq group callbacks, which need every member to succeed: here one failing
client cannot block its round. Models travel as JSON lists of floats, never pickles.

State-store keys (all expire ``ROUND_TTL`` / ``HEALTH_TTL`` seconds after their last write, except
the epsilon ledger, which must outlive rounds to bound a client's total privacy loss):

    {namespace}:fl:round:{<round>}           hash: config (RoundConfig JSON), participants
                                             (JSON list, frozen once), report (ConvergenceReport)
    {namespace}:fl:round:{<round>}:updates   hash: client id -> LocalUpdate JSON
    {namespace}:fl:epsilon:{client}          hash: release id -> epsilon spent by that release
    {namespace}:fl:health:{client}           hash: last HealthReport fields

The two round keys share the hash tag ``{<round>}`` so that their MULTI works on Redis Cluster.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast

import dramatiq
import numpy as np
import numpy.typing as npt
import redis
from pydantic import BaseModel, Field, ValidationError, model_validator

from ..connections import state_store_client
from ..errors import PermanentError
from ..settings import load_settings
from .settings import ActorSettings, load_actor_settings

QUEUE = "fl"
FEATURES = 8
DEFAULT_QUORUM: float = ActorSettings.model_fields["fl_quorum"].default
DEFAULT_EPSILON_BUDGET = 10.0
ROUND_TTL = 86_400
HEALTH_TTL = 3_600
MIN_HEALTHY_SAMPLES = 20
SYNC_CHUNK_BYTES = 64 * 1024

Vector = npt.NDArray[np.float64]
Mechanism = Literal["laplace", "gaussian"]


# --- Data and models ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """One client's local data set: a feature matrix and 0/1 labels."""

    client: str
    features: Vector
    labels: Vector


class LocalUpdate(BaseModel):
    """What a client sends back: its weights (bias last), how many samples trained them, local fit."""

    client: str
    weights: list[float]
    samples: int = Field(ge=1)
    loss: float
    accuracy: float
    noise_scale: float = 0.0


class PrivacyConfig(BaseModel):
    """Clipping and noise for every update of a round; epsilon is spent per client per round."""

    epsilon: float = Field(gt=0)
    mechanism: Mechanism = "laplace"
    clip_norm: float = Field(1.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    budget: float = Field(DEFAULT_EPSILON_BUDGET, gt=0)

    @model_validator(mode="after")
    def _gaussian_bound_applies(self) -> PrivacyConfig:
        if self.mechanism == "gaussian" and self.epsilon >= 1:
            raise ValueError(f"the Gaussian mechanism's bound needs epsilon < 1, got {self.epsilon:g}")
        return self


class RoundConfig(BaseModel):
    round_id: str
    clients: list[str] = Field(min_length=1)
    seed: int
    opened_at: float  # epoch seconds
    global_weights: list[float]
    quorum: float = Field(DEFAULT_QUORUM, gt=0, le=1)
    deadline: float  # epoch seconds
    epochs: int = Field(40, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    l2: float = Field(1e-3, ge=0)
    privacy: PrivacyConfig | None = None

    @property
    def quorum_size(self) -> int:
        return quorum_size(len(self.clients), self.quorum)


class ConvergenceReport(BaseModel):
    round_id: str
    weights: list[float]
    participants: list[str]
    missing: list[str]
    samples: int
    weight_delta_norm: float
    global_accuracy: float
    global_loss: float
    mean_client_accuracy: float


class HealthReport(BaseModel):
    client: str
    healthy: bool
    samples: int
    positive_fraction: float
    problems: list[str]
    checked_at: float


class TransferStats(BaseModel):
    client: str
    path: str
    bytes: int
    sha256: str
    chunks: int
    duration_s: float
    throughput_bytes_per_s: float
    verified: bool


def _stable_int(text: str) -> int:
    """A seed from a string that, unlike ``hash()``, is the same in every process."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _true_model(seed: int) -> tuple[Vector, float]:
    rng = np.random.default_rng([seed, 0])
    return rng.normal(0.0, 1.0, FEATURES), float(rng.normal(0.0, 0.5))


def _labelled(rng: np.random.Generator, features: Vector, seed: int) -> Vector:
    weights, bias = _true_model(seed)
    probability = _sigmoid(features @ weights + bias)
    return (rng.random(len(features)) < probability).astype(np.float64)


def client_shard(client_id: str, seed: int) -> Shard:
    """The client's shard: its own feature region (covariate shift, hence label skew) and size."""
    rng = np.random.default_rng([seed, _stable_int(client_id)])
    samples = int(rng.integers(40, 240))
    centre = rng.normal(0.0, 1.5, FEATURES)
    features = rng.normal(centre, 1.0, (samples, FEATURES))
    return Shard(client=client_id, features=features, labels=_labelled(rng, features, seed))


def held_out_set(seed: int, samples: int = 4000) -> Shard:
    """Data from the whole population (the mixture of every client region), seen by no client."""
    rng = np.random.default_rng([seed, 1])
    centres = rng.normal(0.0, 1.5, (samples, FEATURES))
    features = rng.normal(centres, 1.0)
    return Shard(client="held-out", features=features, labels=_labelled(rng, features, seed))


def _sigmoid(z: Vector) -> Vector:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


def _with_bias(features: Vector) -> Vector:
    return np.hstack([features, np.ones((len(features), 1))])


def evaluate(weights: Vector, shard: Shard) -> tuple[float, float]:
    """(log loss, accuracy) of a model on a shard."""
    probability = _sigmoid(_with_bias(shard.features) @ weights)
    eps = 1e-12
    loss = -np.mean(shard.labels * np.log(probability + eps) + (1 - shard.labels) * np.log(1 - probability + eps))
    accuracy = np.mean((probability >= 0.5) == (shard.labels == 1.0))
    return float(loss), float(accuracy)


def train_logistic_regression(
    shard: Shard, initial: Vector, *, epochs: int, learning_rate: float, l2: float
) -> LocalUpdate:
    """Full-batch gradient descent on the log loss with an L2 penalty, starting from ``initial``."""
    design = _with_bias(shard.features)
    weights = initial.astype(np.float64).copy()
    for _ in range(epochs):
        gradient = design.T @ (_sigmoid(design @ weights) - shard.labels) / len(design) + l2 * weights
        weights -= learning_rate * gradient
    loss, accuracy = evaluate(weights, shard)
    return LocalUpdate(client=shard.client, weights=weights.tolist(), samples=len(design), loss=loss, accuracy=accuracy)


def federated_average(updates: Sequence[LocalUpdate]) -> Vector:
    """FedAvg: the average of the clients' weights, each weighted by its number of samples."""
    if not updates:
        raise ValueError("federated_average needs at least one update")
    matrix = np.array([update.weights for update in updates], dtype=np.float64)
    counts = np.array([update.samples for update in updates], dtype=np.float64)
    return cast(Vector, counts @ matrix / counts.sum())


def convergence_report(config: RoundConfig, updates: Sequence[LocalUpdate], held_out: Shard) -> ConvergenceReport:
    weights = federated_average(updates)
    loss, accuracy = evaluate(weights, held_out)
    participants = sorted(update.client for update in updates)
    return ConvergenceReport(
        round_id=config.round_id,
        weights=weights.tolist(),
        participants=participants,
        missing=sorted(set(config.clients) - set(participants)),
        samples=sum(update.samples for update in updates),
        weight_delta_norm=float(np.linalg.norm(weights - np.asarray(config.global_weights))),
        global_accuracy=accuracy,
        global_loss=loss,
        mean_client_accuracy=float(np.mean([evaluate(np.asarray(u.weights), held_out)[1] for u in updates])),
    )


# --- Differential privacy ----------------------------------------------------------------------


def clip(update: Vector, bound: float, norm: Literal[1, 2]) -> Vector:
    """``update`` scaled down so that its L1 or L2 norm is at most ``bound``."""
    size = float(np.linalg.norm(update, ord=norm))
    return update if size <= bound else update * (bound / size)


def noise_scale(privacy: PrivacyConfig) -> float:
    """Laplace ``b`` or Gaussian ``sigma`` for one release of a clipped update.

    Adjacent inputs differ by one client's whole update (add/remove), so the sensitivity is the
    clipping bound: L1 for Laplace (``b = C / eps``), L2 for Gaussian, whose classical bound
    ``sigma = C * sqrt(2 ln(1.25 / delta)) / eps`` holds only for ``eps < 1``.
    """
    if privacy.mechanism == "laplace":
        return privacy.clip_norm / privacy.epsilon
    return privacy.clip_norm * math.sqrt(2 * math.log(1.25 / privacy.delta)) / privacy.epsilon


def privatize(update: Vector, privacy: PrivacyConfig, rng: np.random.Generator) -> tuple[Vector, float]:
    """The clipped update plus calibrated noise, and the noise scale used.

    Outside tests ``rng`` must be seeded from OS entropy: noise derived from anything public (a
    client id, a round id) could be recomputed and subtracted by whoever receives the update.
    """
    scale = noise_scale(privacy)
    if privacy.mechanism == "laplace":
        return clip(update, privacy.clip_norm, 1) + rng.laplace(0.0, scale, update.shape), scale
    return clip(update, privacy.clip_norm, 2) + rng.normal(0.0, scale, update.shape), scale


class BudgetExhausted(PermanentError):
    """Releasing one more update would take a client past its epsilon budget."""


class EpsilonLedger:
    """Epsilon spent per client, summed over releases (sequential composition), in the state store.

    Each release has an id; recording the same id again (a retried job whose update was never
    published) costs nothing more. A round's release id is the round id.
    """

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def key(self, client_id: str) -> str:
        return f"{self.namespace}:fl:epsilon:{client_id}"

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


# --- Rounds ------------------------------------------------------------------------------------


def quorum_size(clients: int, quorum: float) -> int:
    return max(1, math.ceil(clients * quorum - 1e-9))


def round_ready(config: RoundConfig, reported: int, now: float) -> bool:
    """Every client reported, or the deadline passed with at least a quorum of them."""
    return reported >= len(config.clients) or (now >= config.deadline and reported >= config.quorum_size)


class FederatedRound:
    """One round's shared state: its config, the updates that arrived, the frozen participants."""

    def __init__(self, client: redis.Redis, namespace: str, round_id: str) -> None:
        self.client = client
        self.round_id = round_id
        self.key = f"{namespace}:fl:round:{{{round_id}}}"
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


# --- Client upkeep -----------------------------------------------------------------------------


def check_client(client_id: str, seed: int, now: float) -> HealthReport:
    """Can this client train? Its data must be finite, large enough, and hold both classes."""
    shard = client_shard(client_id, seed)
    problems = []
    if not (np.isfinite(shard.features).all() and np.isfinite(shard.labels).all()):
        problems.append("non-finite values in the data")
    if len(shard.labels) < MIN_HEALTHY_SAMPLES:
        problems.append(f"only {len(shard.labels)} samples (< {MIN_HEALTHY_SAMPLES})")
    positive = float(shard.labels.mean())
    if positive in (0.0, 1.0):
        problems.append("a single class: logistic regression cannot learn a boundary")
    return HealthReport(
        client=client_id,
        healthy=not problems,
        samples=len(shard.labels),
        positive_fraction=positive,
        problems=problems,
        checked_at=now,
    )


def record_health(client: redis.Redis, namespace: str, report: HealthReport) -> None:
    key = f"{namespace}:fl:health:{report.client}"
    fields: dict[str | bytes, int | str] = {
        "healthy": int(report.healthy),
        "samples": report.samples,
        "checked_at": repr(report.checked_at),
    }
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, HEALTH_TTL)
        pipe.execute()


def shard_bytes(shard: Shard) -> bytes:
    """The shard as an ``.npz`` archive of plain float arrays (loadable with allow_pickle=False)."""
    buffer = io.BytesIO()
    np.savez(buffer, features=shard.features, labels=shard.labels)
    return buffer.getvalue()


def sync_shard(
    client_id: str, seed: int, target_dir: Path, clock: Callable[[], float] = time.perf_counter
) -> TransferStats:
    """Copy the client's shard to ``target_dir`` in chunks, hashing on the way, then verify it.

    The file appears under its final name only once complete (write to a temporary file, fsync,
    rename), so a reader never sees half a shard.
    """
    payload = shard_bytes(client_shard(client_id, seed))
    target_dir.mkdir(parents=True, exist_ok=True)
    destination = target_dir / f"{client_id}.npz"
    digest = hashlib.sha256()
    started = clock()
    chunks = 0
    descriptor, temporary = tempfile.mkstemp(dir=target_dir, prefix=f".{client_id}.", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as output:
            for offset in range(0, len(payload), SYNC_CHUNK_BYTES):
                chunk = payload[offset : offset + SYNC_CHUNK_BYTES]
                output.write(chunk)
                digest.update(chunk)
                chunks += 1
            output.flush()
            os.fsync(output.fileno())
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    duration = clock() - started
    checksum = digest.hexdigest()
    return TransferStats(
        client=client_id,
        path=str(destination),
        bytes=len(payload),
        sha256=checksum,
        chunks=chunks,
        duration_s=duration,
        throughput_bytes_per_s=len(payload) / duration if duration > 0 else float("inf"),
        verified=hashlib.sha256(destination.read_bytes()).hexdigest() == checksum,
    )


# --- Actors ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _state() -> tuple[redis.Redis, str]:
    settings = load_settings()
    return state_store_client(settings), settings.namespace


def _round(round_id: str) -> FederatedRound:
    client, namespace = _state()
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
    client, namespace = _state()
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
    client, namespace = _state()
    release_id = f"{round_id}:{uuid.uuid4().hex}"
    remaining = EpsilonLedger(client, namespace).spend(client_id, release_id, config.epsilon, config.budget)
    noisy, scale = privatize(np.asarray(delta, dtype=np.float64), config, np.random.default_rng())
    return {"delta": noisy.tolist(), "noise_scale": scale, "epsilon_remaining": remaining}


@dramatiq.actor(queue_name=QUEUE, actor_name="fl.client_health_check")
def client_health_check(client_id: str, seed: int) -> dict[str, object]:
    client, namespace = _state()
    report = check_client(client_id, seed, time.time())
    record_health(client, namespace, report)
    return report.model_dump()


@dramatiq.actor(queue_name=QUEUE, actor_name="fl.sync_client_data")
def sync_client_data(client_id: str, seed: int, target_dir: str) -> dict[str, object]:
    return sync_shard(client_id, seed, Path(target_dir)).model_dump()
