"""The history buckets: what a flush adds, per minute, with a TTL, in one hash slot; read back as
throughput, percentiles and shares by ``ops/history.py``."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from redis.cluster import key_slot

from dramatiq_fairway.ops.history import Histogram, History
from dramatiq_fairway.store.history import BOUNDS_MS, TTL, Attempt, Finished, HistoryStore, bucket_of
from dramatiq_fairway.store.scripts import run_scripts
from dramatiq_fairway.store.status import JobState, JobStatusStore, StatusWriter

NOW = 1_800_000_000.0  # the start of a minute


def job(at: float = NOW, *, outcome: str | None = "success", tenant: str = "acme", actor: str = "a|b") -> Finished:
    return Finished(at, "q", actor, tenant, "NORMAL", outcome, wait_ms=40.0, runtime_ms=800.0)


def attempt(started: float | None = NOW - 0.5) -> Attempt:
    """An attempt as a worker queues it: sent 2 s before it started, ran 500 ms."""
    options = {"tenant": "acme", "priority_level": "high"}
    return Attempt(NOW, started, "q.DQ", "a", options, int((NOW - 2.5) * 1000), "success")


def test_an_attempt_is_derived_in_the_flush(state_client: redis.Redis, namespace: str) -> None:
    store = HistoryStore(state_client, namespace)
    store.add([])
    assert attempt().ended_at == NOW
    call = store.attempts_call([attempt(), attempt(started=None)])
    assert call is not None
    run_scripts(state_client, [call])
    [minute] = History(store, clock=lambda: NOW).minutes(timedelta(minutes=1))
    assert minute.outcomes == {("q", "a", "success"): 2}  # the queue's canonical name
    assert minute.served == {("q", "acme"): 1}  # the one that never ran was not served
    assert minute.waits[("q", "HIGH")].total_ms == 2000
    assert minute.runtimes[("q", "a")].total_ms == 500


def test_one_call_adds_a_flush_to_each_minute_in_one_hash_slot(state_client: redis.Redis, namespace: str) -> None:
    store = HistoryStore(state_client, namespace)
    call = store.add_call([job(), job(NOW + 59, outcome="retried"), job(NOW + 60, outcome=None)])
    assert call is not None
    assert len({key_slot(key.encode()) for key in call.keys}) == 1
    store.add([job(), job(NOW + 59, outcome="retried"), job(NOW + 60, outcome=None)])
    history = History(store, clock=lambda: NOW + 61)
    first, second = history.minutes(timedelta(minutes=2))
    assert first.outcomes == {("q", "a|b", "success"): 1, ("q", "a|b", "retried"): 1}
    assert second.outcomes == {}  # ran but not finished (revoked): served, no outcome
    assert second.served == {("q", "acme"): 1}
    assert first.runtimes[("q", "a|b")].count == 2
    assert first.runtimes[("q", "a|b")].total_ms == 1600
    assert all(0 < state_client.ttl(key) <= TTL for key in call.keys)
    assert store.add_call([]) is None


def test_tenants_past_the_cap_are_counted_as_other(state_client: redis.Redis, namespace: str) -> None:
    store = HistoryStore(state_client, namespace, max_tenants=2)
    store.add([job(tenant=name) for name in ("t1", "t2", "t3", "t1", "t4")])
    served = History(store, clock=lambda: NOW).served(timedelta(minutes=1))
    assert served == {("q", "t1"): 2, ("q", "t2"): 1, ("q", "other"): 2}


def test_stats_group_by_queue_actor_tenant_and_level(state_client: redis.Redis, namespace: str) -> None:
    store = HistoryStore(state_client, namespace)
    store.add([job(outcome=outcome) for outcome in ("success", "success", "success", "dead_lettered")])
    store.sample_backlog({("q", "NORMAL"): 7, ("q", "HIGH"): 1}, int(NOW // 60) - 5)
    store.sample_backlog({("q", "NORMAL"): 3}, int(NOW // 60))
    history = History(store, clock=lambda: NOW)
    [queue] = history.stats(timedelta(hours=1))
    assert (queue.finished, queue.success, queue.dead_lettered, queue.failure_ratio) == (4, 3, 1, 0.25)
    assert queue.per_minute == pytest.approx(4 / 60, abs=1e-3)
    assert queue.backlog == 3  # the newest sample, not a sum over the hour
    assert queue.wait_p50 is not None
    assert 0.025 <= queue.wait_p50 <= (queue.wait_p99 or 0) <= 0.05  # 40 ms falls in the 25-50 ms bucket
    [actor] = history.stats(timedelta(hours=1), by="actor")
    assert (actor.key, actor.served, actor.wait_p50) == ("a|b", 4, None)
    assert actor.runtime_p95 is not None
    assert 0.5 <= actor.runtime_p95 <= (actor.runtime_p99 or 0) <= 1.0
    [tenant] = history.stats(timedelta(hours=1), by="tenant")
    assert (tenant.key, tenant.served, tenant.finished) == ("acme", 4, None)
    [level] = history.stats(timedelta(hours=1), by="level")
    assert (level.key, level.backlog, level.finished) == ("NORMAL", 3, None)
    assert history.stats(timedelta(hours=1), queue="other") == []
    with pytest.raises(ValueError, match="since"):
        history.stats(timedelta(days=2))


def test_histogram_percentiles_interpolate_inside_a_bucket() -> None:
    histogram = Histogram()
    assert histogram.quantile(0.5) is None
    histogram.add(f"h{bucket_of(40)}", 50)  # 25-50 ms
    histogram.add(f"h{bucket_of(700)}", 50)  # 500-1000 ms
    assert histogram.quantile(0.5) == pytest.approx(0.050)
    assert histogram.quantile(0.75) == pytest.approx(0.750)
    histogram.add(f"h{len(BOUNDS_MS)}", 100)  # above the last bound
    assert histogram.quantile(0.99) == BOUNDS_MS[-1] / 1000


def test_the_status_writer_adds_the_history_in_its_flush(state_client: redis.Redis, namespace: str) -> None:
    status = JobStatusStore(state_client, namespace)
    history = History(HistoryStore(state_client, namespace), clock=lambda: NOW)
    writer = StatusWriter(status, interval=3600, history=history.store)
    writer.transition("m1", JobState.SUCCESS, "a", "q")
    writer.finished(attempt())
    writer.flush()
    assert status.get("m1") is not None
    assert history.served(timedelta(minutes=1)) == {("q", "acme"): 1}
    writer.finished(attempt())  # a flush with history alone
    writer.flush()
    assert history.served(timedelta(minutes=1)) == {("q", "acme"): 2}
    writer.close()
