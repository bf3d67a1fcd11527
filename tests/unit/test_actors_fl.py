"""Federated learning actors without a server: the real math (FedAvg, noise calibration, clipping) and
the shard sync. The quorum on both brokers is in tests/actors/test_actors_fl.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dramatiq_fairway.actors import fl


def _trained(clients: list[str], seed: int) -> list[fl.LocalUpdate]:
    initial = np.zeros(fl.FEATURES + 1)
    return [
        fl.train_logistic_regression(fl.client_shard(c, seed), initial, epochs=40, learning_rate=0.1, l2=1e-3)
        for c in clients
    ]


def test_fedavg_equals_the_sample_weighted_numpy_average() -> None:
    rng = np.random.default_rng(7)
    updates = [
        fl.LocalUpdate(client=f"c{i}", weights=rng.normal(size=9).tolist(), samples=int(n), loss=0.0, accuracy=0.0)
        for i, n in enumerate([10, 250, 3, 77])
    ]
    expected = np.average(
        np.array([u.weights for u in updates]), axis=0, weights=np.array([u.samples for u in updates])
    )
    np.testing.assert_allclose(fl.federated_average(updates), expected, rtol=1e-12)


def test_shards_are_reproducible_and_not_identically_distributed() -> None:
    first = fl.client_shard("client-1", seed=3)
    again = fl.client_shard("client-1", seed=3)
    other = fl.client_shard("client-2", seed=3)
    np.testing.assert_array_equal(first.features, again.features)
    np.testing.assert_array_equal(first.labels, again.labels)
    # Each client sees its own region of feature space: the means differ by far more than noise.
    assert np.linalg.norm(first.features.mean(axis=0) - other.features.mean(axis=0)) > 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aggregated_model_beats_the_average_client_on_held_out_data(seed: int) -> None:
    updates = _trained([f"c{i}" for i in range(8)], seed)
    held_out = fl.held_out_set(seed)
    global_accuracy = fl.evaluate(fl.federated_average(updates), held_out)[1]
    client_accuracies = [fl.evaluate(np.asarray(u.weights), held_out)[1] for u in updates]
    assert global_accuracy > np.mean(client_accuracies) + 0.02


@pytest.mark.parametrize("epsilon", [0.25, 1.0, 4.0])
def test_laplace_noise_scale_matches_epsilon(epsilon: float) -> None:
    privacy = fl.PrivacyConfig(epsilon=epsilon, mechanism="laplace", clip_norm=1.0)
    noisy, scale = fl.privatize(np.zeros(200_000), privacy, np.random.default_rng(11))
    assert scale == pytest.approx(1.0 / epsilon)
    # For Laplace(0, b): E|X| = b and Var X = 2 b^2. 200k draws pin both within 1 %.
    assert np.mean(np.abs(noisy)) == pytest.approx(1.0 / epsilon, rel=0.01)
    assert np.var(noisy) == pytest.approx(2.0 / epsilon**2, rel=0.02)


def test_gaussian_noise_scale_matches_epsilon_and_delta() -> None:
    privacy = fl.PrivacyConfig(epsilon=0.5, mechanism="gaussian", clip_norm=2.0, delta=1e-5)
    noisy, scale = fl.privatize(np.zeros(200_000), privacy, np.random.default_rng(12))
    expected_sigma = 2.0 * np.sqrt(2 * np.log(1.25 / 1e-5)) / 0.5
    assert scale == pytest.approx(expected_sigma)
    assert np.std(noisy) == pytest.approx(expected_sigma, rel=0.01)


def test_gaussian_mechanism_refuses_epsilon_of_one_or_more() -> None:
    with pytest.raises(ValueError, match="epsilon < 1"):
        fl.PrivacyConfig(epsilon=1.0, mechanism="gaussian")


def test_updates_are_clipped_before_noise() -> None:
    big = np.full(10, 5.0)
    assert np.linalg.norm(fl.clip(big, 1.0, 2)) == pytest.approx(1.0)
    assert np.abs(fl.clip(big, 1.0, 1)).sum() == pytest.approx(1.0)
    small = np.full(10, 0.01)
    np.testing.assert_array_equal(fl.clip(small, 1.0, 2), small)


def test_sync_writes_a_verified_shard_with_transfer_statistics(tmp_path: Path) -> None:
    ticks = iter([10.0, 10.5])
    stats = fl.sync_shard("client-3", 9, tmp_path / "sync", clock=lambda: next(ticks))
    path = Path(stats.path)
    assert path == tmp_path / "sync" / "client-3.npz"
    assert stats.bytes == path.stat().st_size
    assert stats.verified
    assert stats.duration_s == pytest.approx(0.5)
    assert stats.throughput_bytes_per_s == pytest.approx(stats.bytes / 0.5)
    assert stats.chunks == -(-stats.bytes // fl.SYNC_CHUNK_BYTES)
    assert list((tmp_path / "sync").iterdir()) == [path]  # no temporary file left behind
    with np.load(path, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["features"], fl.client_shard("client-3", 9).features)
