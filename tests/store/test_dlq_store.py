"""DeadLetterStore on real Redis: indexes, trends, retention, purge, export and the spool."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.dead_letters import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStore,
    NothingSelected,
    purge_expired,
)

from ..conftest import REDIS_URL
from ..support.helpers import free_port

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now.timestamp()


def make_settings(namespace: str, data_dir: Path, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {"state_url": REDIS_URL, **overrides}
    return Settings(broker="redis", namespace=namespace, data_dir=data_dir, **fields)


def record(record_id: str, at: datetime = T0, **fields: Any) -> DeadLetter:
    defaults: dict[str, Any] = {
        "queue": "papers",
        "actor": "fetch",
        "tenant": "t1",
        "error_type": "KeyError",
        "error_message": "boom",
        "fingerprint": "fp-a",
        "reason": "retries_exhausted",
        "raw": {"queue_name": "papers", "actor_name": "fetch", "args": [], "kwargs": {}, "options": {}},
    }
    return DeadLetter(id=record_id, failed_at=at, **{**defaults, **fields})


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + timedelta(hours=5))


@pytest.fixture
def store(namespace: str, short_tmp: Path, state_client: redis.Redis, clock: Clock) -> DeadLetterStore:
    return DeadLetterStore(make_settings(namespace, short_tmp), clock=clock)


def ns_keys(client: redis.Redis, namespace: str) -> list[str]:
    return sorted(key.decode() for key in client.scan_iter(match=f"{namespace}:*", count=1000))


def test_add_is_idempotent_by_id_and_get_returns_the_record(store: DeadLetterStore) -> None:
    assert store.add(record("m1")) == "stored"
    assert store.add(record("m1", error_message="second write")) == "stored"
    got = store.get("m1")
    assert got is not None
    assert got.error_message == "boom"
    assert store.count() == 1
    assert store.get("missing") is None


def test_rewrite_replaces_existing_records_only_and_keeps_their_indexes(
    store: DeadLetterStore, state_client: redis.Redis, namespace: str
) -> None:
    store.add(record("m1"))
    store.add(record("m2"))
    store.purge(["m2"])
    keys_before = ns_keys(state_client, namespace)
    assert store.rewrite([record("m1", options={"sealed": 1}), record("m2", options={"sealed": 1})]) == 1
    got = store.get("m1")
    assert got is not None
    assert got.options == {"sealed": 1}
    assert store.get("m2") is None
    assert [r.id for r in store.list(DeadLetterFilter(fingerprint="fp-a"))] == ["m1"]
    assert ns_keys(state_client, namespace) == keys_before


def test_every_key_lives_under_the_namespace_dlq_prefix(
    store: DeadLetterStore, state_client: redis.Redis, namespace: str
) -> None:
    store.add(record("m1"))
    keys = ns_keys(state_client, namespace)
    assert keys
    assert all(key.startswith(f"{namespace}:dlq:{{{namespace}}}:") for key in keys)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"queue": "photos"}, ["m3"]),
        ({"actor": "summarize"}, ["m2"]),
        ({"error_type": "ValueError"}, ["m4", "m2"]),
        ({"fingerprint": "fp-b"}, ["m4"]),
        ({"tenant": "t2"}, ["m4", "m3"]),
        ({"reason": "permanent"}, ["m2"]),
        ({"since": T0 + timedelta(minutes=90)}, ["m4", "m3"]),
        ({"tenant": "t2", "queue": "papers"}, ["m4"]),
        ({}, ["m4", "m3", "m2", "m1"]),
    ],
)
def test_list_filters_newest_first(store: DeadLetterStore, filters: dict[str, Any], expected: list[str]) -> None:
    store.add(record("m1", T0))
    store.add(record("m2", T0 + timedelta(hours=1), actor="summarize", error_type="ValueError", reason="permanent"))
    store.add(record("m3", T0 + timedelta(hours=2), queue="photos", tenant="t2"))
    store.add(record("m4", T0 + timedelta(hours=3), tenant="t2", error_type="ValueError", fingerprint="fp-b"))
    assert [r.id for r in store.list(DeadLetterFilter(**filters))] == expected


def test_listing_pages_through_ties_without_losing_or_repeating(store: DeadLetterStore) -> None:
    # 1,200 records over 3 milliseconds: pages of 500 must walk through runs of equal scores.
    for n in range(1200):
        store.add(record(f"m{n:04}", T0 + timedelta(milliseconds=n % 3)))
    ids = [r.id for r in store.iter_records()]
    assert len(ids) == 1200
    assert len(set(ids)) == 1200
    assert [r.id for r in store.list(limit=3)] == sorted((f"m{n:04}" for n in range(2, 1200, 3)), reverse=True)[:3]


def test_stats_counts_first_last_and_buckets(store: DeadLetterStore) -> None:
    for minute in (0, 10, 70):
        store.add(record(f"a{minute}", T0 + timedelta(minutes=minute)))
    store.add(record("b1", T0 + timedelta(minutes=20), fingerprint="fp-b"))
    rows = store.stats(by="fingerprint")
    assert [(row.key, row.count) for row in rows] == [("fp-a", 3), ("fp-b", 1)]
    first = rows[0]
    assert first.first_seen == T0
    assert first.last_seen == T0 + timedelta(minutes=70)
    assert [(b.start, b.count) for b in first.buckets] == [(T0, 2), (T0 + timedelta(hours=1), 1)]
    two_hours = store.stats(by="fingerprint", bucket=timedelta(hours=2))[0]
    assert [(b.start, b.count) for b in two_hours.buckets] == [(T0, 3)]
    quarter = store.stats(by="fingerprint", bucket=timedelta(minutes=15))[0]
    assert [(b.start, b.count) for b in quarter.buckets] == [
        (T0, 2),
        (T0 + timedelta(minutes=60), 1),
    ]


def test_stats_since_uses_the_clock_and_by_other_dimensions(store: DeadLetterStore, clock: Clock) -> None:
    store.add(record("old", T0))
    store.add(record("new", T0 + timedelta(hours=4, minutes=30), actor="summarize"))
    recent = store.stats(by="actor", since=timedelta(hours=1))
    assert [(row.key, row.count) for row in recent] == [("summarize", 1)]
    assert {row.key for row in store.stats(by="queue")} == {"papers"}
    assert store.stats(by="queue")[0].count == 2


def test_max_records_evicts_the_oldest_and_its_index_entries(
    namespace: str, short_tmp: Path, state_client: redis.Redis, clock: Clock
) -> None:
    store = DeadLetterStore(make_settings(namespace, short_tmp, dlq={"max_records": 3}), clock=clock)
    for n in range(5):
        store.add(record(f"m{n}", T0 + timedelta(minutes=n), fingerprint=f"fp-{n}"))
    assert [r.id for r in store.list()] == ["m4", "m3", "m2"]
    assert {row.key for row in store.stats()} == {"fp-2", "fp-3", "fp-4"}
    assert not any("fp-0" in key or "fp-1" in key for key in ns_keys(state_client, namespace))


def test_purge_expired_drops_records_past_retention(
    namespace: str, short_tmp: Path, state_client: redis.Redis, clock: Clock
) -> None:
    store = DeadLetterStore(make_settings(namespace, short_tmp, dlq={"retention_days": 1}), clock=clock)
    store.add(record("old", T0 - timedelta(days=2), fingerprint="fp-old"))
    store.add(record("fresh", T0))
    assert store.purge_expired() == 1
    assert [r.id for r in store.list()] == ["fresh"]
    assert [row.key for row in store.stats()] == ["fp-a"]
    clock.now += timedelta(days=2)
    assert store.purge_expired() == 1
    assert ns_keys(state_client, namespace) == []


def test_periodic_purge_expired_reads_the_settings(namespace: str, short_tmp: Path, state_client: redis.Redis) -> None:
    settings = make_settings(namespace, short_tmp, dlq={"retention_days": 1})
    DeadLetterStore(settings).add(record("ancient", datetime.now(UTC) - timedelta(days=3)))
    DeadLetterStore(settings).add(record("today", datetime.now(UTC)))
    assert purge_expired(settings) == 1
    assert [r.id for r in DeadLetterStore(settings).list()] == ["today"]


def test_purge_by_ids_filters_and_age(store: DeadLetterStore) -> None:
    store.add(record("m1", T0))
    store.add(record("m2", T0 + timedelta(hours=1), queue="photos"))
    store.add(record("m3", T0 + timedelta(hours=4)))
    with pytest.raises(NothingSelected):
        store.purge()
    assert store.purge(["m1"]) == 1
    assert store.purge(filters=DeadLetterFilter(queue="photos")) == 1
    assert store.purge(older_than=timedelta(hours=2)) == 0
    assert store.purge(older_than=timedelta(minutes=30)) == 1
    assert store.count() == 0
    assert store.stats() == []


def test_export_json_lines_and_csv(store: DeadLetterStore) -> None:
    store.add(record("m1", T0, kwargs={"x": 1}))
    store.add(record("m2", T0 + timedelta(hours=1), queue="photos"))
    lines = io.StringIO()
    assert store.export(lines, "json") == 2
    exported = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [item["id"] for item in exported] == ["m2", "m1"]
    assert exported[1]["kwargs"] == {"x": 1}
    table = io.StringIO()
    assert store.export(table, "csv", DeadLetterFilter(queue="papers")) == 1
    rows = list(csv.DictReader(io.StringIO(table.getvalue())))
    assert len(rows) == 1
    assert rows[0]["id"] == "m1"
    assert json.loads(rows[0]["kwargs"]) == {"x": 1}
    assert list(rows[0]) == list(DeadLetter.model_fields)


def test_records_spool_while_the_store_is_down_and_replay_when_it_returns(
    namespace: str, short_tmp: Path, state_client: redis.Redis
) -> None:
    down = make_settings(namespace, short_tmp, state_url=f"redis://127.0.0.1:{free_port()}/0")
    offline = DeadLetterStore(down)
    assert offline.add(record("m1")) == "spooled"
    assert offline.add(record("m2")) == "spooled"
    assert offline.spool.pending()
    assert offline.replay_spool() == 0
    assert state_client.exists(f"{namespace}:dlq:{{{namespace}}}:rec:m1") == 0

    online = DeadLetterStore(make_settings(namespace, short_tmp))
    assert online.add(record("m3")) == "stored"
    assert sorted(r.id for r in online.list()) == ["m1", "m2", "m3"]
    assert not online.spool.pending()


def test_add_many_writes_through_the_same_script_in_batches(
    namespace: str, short_tmp: Path, state_client: redis.Redis, clock: Clock
) -> None:
    store = DeadLetterStore(make_settings(namespace, short_tmp, dlq={"max_records": 4}), clock=clock)
    store.add(record("m0", T0))
    batch = [record(f"m{n}", T0 + timedelta(minutes=n), fingerprint=f"fp-{n % 2}") for n in range(6)]
    # m0 is already stored (left as it was); a batch of 2 makes the last round trip a partial one.
    assert store.add_many(batch, batch=2) == 5
    assert store.add_many(batch[-2:], batch=2) == 0
    assert [r.id for r in store.list()] == ["m5", "m4", "m3", "m2"]
    assert {(row.key, row.count) for row in store.stats()} == {("fp-0", 2), ("fp-1", 2)}
    assert [r.id for r in store.list(DeadLetterFilter(fingerprint="fp-1"))] == ["m5", "m3"]
    assert not any(f"rec:m{n}" in key for n in (0, 1) for key in ns_keys(state_client, namespace))


class ReadSpy:
    """Records how many ids each page read asks Redis for."""

    def __init__(self, store: DeadLetterStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pages: list[int] = []
        read = store._read

        def spy(ids: list[str]) -> list[bytes | None]:
            self.pages.append(len(ids))
            return read(ids)

        monkeypatch.setattr(store, "_read", spy)


def test_list_reads_only_limit_records_when_one_index_answers(
    store: DeadLetterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_many(
        record(f"m{n:03}", T0 + timedelta(seconds=n), tenant=f"t{n % 2}", queue="photos" if n % 4 == 3 else "papers")
        for n in range(120)
    )
    spy = ReadSpy(store, monkeypatch)
    assert [r.id for r in store.list(DeadLetterFilter(tenant="t1"), limit=5)] == [
        f"m{n:03}" for n in range(119, 109, -2)
    ]
    assert [r.id for r in store.list(DeadLetterFilter(since=T0 + timedelta(seconds=100)), limit=3)] == [
        "m119",
        "m118",
        "m117",
    ]
    assert spy.pages == [5, 3]
    # Two equalities: the smaller index (t1, 60 ids) is read a whole page at a time, the queue is
    # checked on the records' index fields, and only the 30 matching records are fetched.
    assert [r.id for r in store.list(DeadLetterFilter(tenant="t1", queue="papers"), limit=2)] == ["m117", "m113"]
    assert spy.pages[2:] == [30]


def test_export_streams_page_by_page(store: DeadLetterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_many(record(f"m{n:04}", T0 + timedelta(seconds=n)) for n in range(1100))
    spy = ReadSpy(store, monkeypatch)
    out = io.StringIO()
    assert store.export(out, "csv") == 1100
    assert spy.pages == [500, 500, 100]
    ids = [row["id"] for row in csv.DictReader(io.StringIO(out.getvalue()))]
    assert ids == [f"m{n:04}" for n in range(1099, -1, -1)]


def test_purge_expired_reads_only_the_expired_end_of_the_time_index(
    namespace: str, short_tmp: Path, clock: Clock, state_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DeadLetterStore(make_settings(namespace, short_tmp, dlq={"retention_days": 1}), clock=clock)
    store.add_many(record(f"old{n:04}", T0 - timedelta(days=2, seconds=n)) for n in range(700))
    store.add_many(record(f"new{n:04}", T0 + timedelta(seconds=n)) for n in range(300))
    removals: list[int] = []
    remove = store._remove

    def spy(ids: list[str]) -> int:
        removals.append(len(ids))
        return remove(ids)

    monkeypatch.setattr(store, "_remove", spy)
    assert store.purge_expired() == 700
    assert removals == [500, 200]
    assert store.purge_expired() == 0
    assert removals == [500, 200]
    assert store.count() == 300


def test_trend_counters_span_days_and_follow_removals(
    store: DeadLetterStore, state_client: redis.Redis, clock: Clock
) -> None:
    clock.now = T0 + timedelta(days=3)
    late = T0.replace(hour=23, minute=30)
    store.add_many([record("a", late), record("b", late + timedelta(hours=1)), record("c", T0 + timedelta(days=2))])
    daily = store.stats(bucket=timedelta(days=1))[0]
    assert [(b.start, b.count) for b in daily.buckets] == [
        (T0.replace(hour=0), 1),
        (T0.replace(hour=0) + timedelta(days=1), 1),
        (T0.replace(hour=0) + timedelta(days=2), 1),
    ]
    # Since 23:50: the hour holding it counts whole, while ``count`` and ``first_seen`` start at 23:50.
    recent = store.stats(since=clock.now - late.replace(minute=50))[0]
    assert (recent.count, recent.first_seen) == (2, late + timedelta(hours=1))
    assert [(b.start, b.count) for b in recent.buckets] == [
        (late.replace(minute=0), 1),
        (late.replace(minute=0) + timedelta(hours=1), 1),
        (T0 + timedelta(days=2), 1),
    ]
    assert store.stats(since=timedelta(days=100_000))[0].count == 3
    trend = f"{store.prefix}trend:fingerprint:fp-a"
    assert len(state_client.hgetall(trend)) == 3
    assert store.purge(["c"]) == 1
    assert len(state_client.hgetall(trend)) == 2
    assert [b.count for b in store.stats()[0].buckets] == [1, 1]
