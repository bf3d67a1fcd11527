"""``fairway dlq`` verbs through their argparse registration, on real Redis."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Broker, Worker

from dramatiq_fairway.cli.dlq import register
from dramatiq_fairway.cli.output import CommandError, UsageError
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.dead_letters import DeadLetter, DeadLetterStore, RedactedRecords

from ..conftest import REDIS_URL
from ..support.helpers import settings_env, wait_for

NOW = datetime.now(UTC)


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="fairway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def json_out(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    capsys.readouterr()
    run(argv)
    return json.loads(capsys.readouterr().out)


def record(record_id: str, age: timedelta, **fields: Any) -> DeadLetter:
    defaults: dict[str, Any] = {
        "queue": "papers",
        "actor": "fetch",
        "fingerprint": "fp-a",
        "reason": "retries_exhausted",
        "error_type": "TimeoutError",
        "raw": {"queue_name": "papers", "actor_name": "fetch", "args": [1], "kwargs": {}, "options": {}},
    }
    return DeadLetter(id=record_id, failed_at=NOW - age, **{**defaults, **fields})


@pytest.fixture
def cli_settings(
    namespace: str, short_tmp: Path, state_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    settings = Settings(broker="redis", namespace=namespace, state_url=REDIS_URL, data_dir=short_tmp)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    return settings


@pytest.fixture
def broker_settings_in_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The ``broker`` fixture's settings, as the environment the CLI reads."""
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    return settings


@pytest.fixture
def store(cli_settings: Settings) -> DeadLetterStore:
    store = DeadLetterStore(cli_settings)
    store.add(record("m1", timedelta(days=3)))
    store.add(record("m2", timedelta(hours=2), queue="photos", tenant="t2", fingerprint="fp-b"))
    store.add(
        record("m3", timedelta(minutes=5), kwargs={"password": "[REDACTED]"}, redacted_fields=["kwargs.password"])
    )
    return store


def test_list_json_with_filters_and_limit(store: DeadLetterStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert [r["id"] for r in json_out(capsys, ["dlq", "list", "--json"])] == ["m3", "m2", "m1"]
    assert [r["id"] for r in json_out(capsys, ["dlq", "list", "--json", "--limit", "1"])] == ["m3"]
    assert [r["id"] for r in json_out(capsys, ["dlq", "list", "--json", "--tenant", "t2"])] == ["m2"]
    assert [r["id"] for r in json_out(capsys, ["dlq", "list", "--json", "--since", "1d"])] == ["m3", "m2"]
    assert [r["id"] for r in json_out(capsys, ["dlq", "list", "--json", "--fingerprint", "fp-b"])] == ["m2"]
    full = json_out(capsys, ["dlq", "list", "--json", "--queue", "photos"])[0]
    assert set(full) == set(DeadLetter.model_fields)


def test_list_for_people_is_a_table(store: DeadLetterStore, capsys: pytest.CaptureFixture[str]) -> None:
    run(["dlq", "list", "--actor", "fetch"])
    out = capsys.readouterr().out
    assert "m1" in out
    assert "fp-a" in out


def test_show_prints_one_record_or_fails_in_one_line(
    store: DeadLetterStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert json_out(capsys, ["dlq", "show", "m2", "--json"])["queue"] == "photos"
    with pytest.raises(CommandError, match="no dead letter with id 'nope'"):
        run(["dlq", "show", "nope"])


def test_stats_json_shape(store: DeadLetterStore, capsys: pytest.CaptureFixture[str]) -> None:
    rows = json_out(capsys, ["dlq", "stats", "--json", "--by", "fingerprint", "--bucket", "1h"])
    assert [(row["key"], row["count"]) for row in rows] == [("fp-a", 2), ("fp-b", 1)]
    assert set(rows[0]) == {"key", "count", "first_seen", "last_seen", "buckets"}
    assert sum(bucket["count"] for bucket in rows[0]["buckets"]) == 2
    assert set(rows[0]["buckets"][0]) == {"start", "count"}
    recent = json_out(capsys, ["dlq", "stats", "--json", "--by", "queue", "--since", "1d"])
    assert [(row["key"], row["count"]) for row in recent] == [("papers", 1), ("photos", 1)]


def test_export_csv_to_a_file_and_json_lines_to_stdout(
    store: DeadLetterStore, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = short_tmp / "out.csv"
    summary = json_out(capsys, ["dlq", "export", "--format", "csv", "-o", str(target), "--json", "--queue", "papers"])
    assert summary == {"written": 2, "file": str(target), "format": "csv"}
    assert target.read_text().splitlines()[0].startswith("id,queue,actor")
    run(["dlq", "export", "--format", "json"])
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["m3", "m2", "m1"]


def test_purge_needs_yes(store: DeadLetterStore, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CommandError, match="1 dead letter"):
        run(["dlq", "purge", "--older-than", "1d"])
    assert store.count() == 3
    assert json_out(capsys, ["dlq", "purge", "--older-than", "1d", "--yes", "--json"]) == {"purged": 1}
    assert json_out(capsys, ["dlq", "purge", "m2", "--yes", "--json"]) == {"purged": 1}
    assert [r.id for r in store.list()] == ["m3"]


def test_requeue_dry_run_and_redacted_refusal(store: DeadLetterStore, capsys: pytest.CaptureFixture[str]) -> None:
    result = json_out(capsys, ["dlq", "requeue", "--queue", "photos", "--dry-run", "--json"])
    assert result["dry_run"] is True
    assert [(item["id"], item["priority_level"]) for item in result["requeued"]] == [("m2", "HIGH")]
    assert store.get("m2") is not None
    with pytest.raises(RedactedRecords, match=r"kwargs\.password"):
        run(["dlq", "requeue", "m3"])
    assert store.get("m3") is not None


@pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)
def test_requeue_sends_the_job_again(
    broker: Broker,
    broker_settings_in_env: Settings,
    queue_name: str,
    start_worker: Callable[..., Worker],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fixed: list[bool] = []
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def charge(order: int) -> None:
        if not fixed:
            raise TimeoutError("payment service timed out")
        done.append(order)

    message = charge.send(9)
    start_worker()
    store = DeadLetterStore(broker_settings_in_env)
    wait_for(lambda: store.get(message.message_id))
    fixed.append(True)
    result = json_out(capsys, ["dlq", "requeue", message.message_id, "--priority", "low", "--json"])
    assert [item["id"] for item in result["requeued"]] == [message.message_id]
    wait_for(lambda: done)
    broker.join(queue_name, timeout=10_000)
    assert done == [9]
    assert store.get(message.message_id) is None


def test_requeue_or_purge_without_selection_is_refused(store: DeadLetterStore) -> None:
    with pytest.raises(UsageError, match=r"name record ids \(ID ...\) or give a filter"):
        run(["dlq", "purge", "--yes"])
    with pytest.raises(UsageError, match="name record ids"):
        run(["dlq", "requeue"])
    assert store.count() == 3
