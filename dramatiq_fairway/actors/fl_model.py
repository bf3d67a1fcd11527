"""Federated learning's computation: synthetic client shards, logistic regression, FedAvg,
differential privacy, client checks. Pure numpy, no state store (``fl_state.py``), no actor (``fl.py``).

Every client owns a synthetic, non-IID shard of one logistic-regression task, generated from the
client id and a seed (so any worker can rebuild it, and a retry sees the same data).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field, model_validator

from .settings import ActorSettings

FEATURES = 8
# The field default, not ActorSettings(): importing the model must not read the environment.
DEFAULT_QUORUM: float = ActorSettings.model_fields["fl_quorum"].default
DEFAULT_EPSILON_BUDGET = 10.0
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


# --- Rounds ------------------------------------------------------------------------------------


def quorum_size(clients: int, quorum: float) -> int:
    return max(1, math.ceil(clients * quorum - 1e-9))


def round_ready(config: RoundConfig, reported: int, now: float) -> bool:
    """Every client reported, or the deadline passed with at least a quorum of them."""
    return reported >= len(config.clients) or (now >= config.deadline and reported >= config.quorum_size)


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
