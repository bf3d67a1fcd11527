"""Backoff strategies stay inside their bounds over many draws; Retry-After reads seconds and HTTP dates."""

from __future__ import annotations

import random
import statistics

import pytest
from freezegun import freeze_time

from dramatiq_fairway.failures.backoff import BACKOFF_STRATEGIES, DEFAULT_BACKOFF, compute_backoff, parse_retry_after

DRAWS = 2000
LOW, HIGH = 100, 60_000


def test_default_strategy_is_full_jitter() -> None:
    assert DEFAULT_BACKOFF == "full_jitter"
    assert sorted(BACKOFF_STRATEGIES) == ["decorrelated_jitter", "exponential", "fixed", "full_jitter"]


@pytest.mark.parametrize("retries", [1, 2, 5, 10, 30])
def test_full_jitter_stays_between_min_and_the_exponential_ceiling(retries: int) -> None:
    rng = random.Random(1)
    ceiling = min(HIGH, LOW * 2**retries)
    delays = [compute_backoff("full_jitter", retries, min_backoff=LOW, max_backoff=HIGH, rng=rng) for _ in range(DRAWS)]
    assert all(LOW <= delay <= ceiling for delay in delays)
    # Full jitter spreads over the whole window: both ends are reached and the mean sits mid-way.
    span = ceiling - LOW
    assert min(delays) < LOW + span * 0.05
    assert max(delays) > ceiling - span * 0.05
    assert abs(statistics.mean(delays) - (LOW + ceiling) / 2) < span * 0.05


def test_decorrelated_jitter_stays_between_min_and_three_times_the_previous_delay() -> None:
    rng = random.Random(2)
    previous = None
    for retries in range(1, DRAWS + 1):
        delay = compute_backoff(
            "decorrelated_jitter", retries, min_backoff=LOW, max_backoff=HIGH, previous=previous, rng=rng
        )
        upper = min(HIGH, 3 * (previous or LOW))
        assert LOW <= delay <= upper
        previous = delay
    # It climbs to the cap and stays near it rather than collapsing back to the minimum.
    assert previous is not None
    assert previous > LOW


def test_exponential_doubles_from_min_up_to_max() -> None:
    delays = [compute_backoff("exponential", n, min_backoff=LOW, max_backoff=HIGH) for n in range(1, 12)]
    assert delays == [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000]


def test_fixed_is_always_min_backoff() -> None:
    assert {compute_backoff("fixed", n, min_backoff=LOW, max_backoff=HIGH) for n in range(1, 50)} == {LOW}


@pytest.mark.parametrize("strategy", sorted(BACKOFF_STRATEGIES))
def test_no_strategy_overflows_or_exceeds_max_on_huge_retry_counts(strategy: str) -> None:
    rng = random.Random(3)
    for retries in (100, 10_000, 10**9):
        assert LOW <= compute_backoff(strategy, retries, min_backoff=LOW, max_backoff=HIGH, rng=rng) <= HIGH


@pytest.mark.parametrize("strategy", sorted(BACKOFF_STRATEGIES))
def test_min_above_max_is_clamped_to_max(strategy: str) -> None:
    assert compute_backoff(strategy, 3, min_backoff=500, max_backoff=200, rng=random.Random(4)) == 200


def test_randomness_is_injectable() -> None:
    first = [compute_backoff("full_jitter", 5, min_backoff=LOW, max_backoff=HIGH, rng=random.Random(7)) for _ in "ab"]
    again = [compute_backoff("full_jitter", 5, min_backoff=LOW, max_backoff=HIGH, rng=random.Random(7)) for _ in "ab"]
    assert first == again


def test_unknown_strategy_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="full_jitter") as error:
        compute_backoff("linear", 1)
    assert "'linear'" in str(error.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(2, 2.0), (1.5, 1.5), ("2", 2.0), (" 120 ", 120.0), ("0.25", 0.25), (-3, 0.0), ("-3", 0.0)],
)
def test_retry_after_in_seconds(value: str | float, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize("value", [None, "", "soon", "nan", "inf", float("inf"), "Someday, 99 Foo 2015"])
def test_unreadable_retry_after_is_none(value: str | float | None) -> None:
    assert parse_retry_after(value) is None


@freeze_time("2026-11-25 10:00:00", tz_offset=0)
def test_retry_after_http_date_counts_from_now() -> None:
    assert parse_retry_after("Wed, 25 Nov 2026 10:02:00 GMT") == 120.0
    assert parse_retry_after("Wednesday, 25-Nov-26 10:00:30 GMT") == 30.0  # RFC 850, still allowed by HTTP
    assert parse_retry_after("Wed Nov 25 10:00:05 2026") == 5.0  # asctime, no zone: UTC


@freeze_time("2026-11-25 10:00:00", tz_offset=0)
def test_retry_after_http_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Wed, 25 Nov 2026 09:00:00 GMT") == 0.0
