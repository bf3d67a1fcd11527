"""Bulk cancel by filter on real brokers (ops/bulk_cancel.py, store/status_bulk.py), its audit
entry, and the `fairway jobs cancel` filters and `fairway audit` verbs."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import dramatiq
import pytest
import redis
from dramatiq import Broker, Worker

from dramatiq_fairway import enqueue_many
from dramatiq_fairway.cli import main
from dramatiq_fairway.ops.bulk_cancel import cancel_queued, parse_before, queued_job_filter
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store import status, status_bulk
from dramatiq_fairway.store.audit import AuditLog
from dramatiq_fairway.store.dead_letters import DeadLetterStore
from dramatiq_fairway.store.status import JobState, JobStatusStore
from dramatiq_fairway.store.status_bulk import QueuedJobFilter, QueuedJobs

from ..support.helpers import settings_env, wait_for


@pytest.fixture
def store(settings: Settings, state_client: redis.Redis) -> JobStatusStore:
    return JobStatusStore.from_settings(settings, client=state_client)


@pytest.fixture
def audit(settings: Settings, state_client: redis.Redis) -> AuditLog:
    return AuditLog.from_settings(settings, client=state_client)


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)


def states_of(store: JobStatusStore, ids: list[str]) -> list[str]:
    pipe = store.client.pipeline(transaction=False)
    for job in ids:
        pipe.hget(store.job_key(job), "state")
    return [value.decode() if value else "" for value in pipe.execute()]


def test_bulk_cancel_by_tenant_revokes_only_that_tenants_queued_jobs(
    broker: Broker,
    queue_name: str,
    store: JobStatusStore,
    audit: AuditLog,
    start_worker: Callable[..., Worker],
) -> None:
    ran: list[tuple[str, int]] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(tenant: str, n: int) -> None:
        ran.append((tenant, n))

    # Both producer paths write the tenant with PENDING: enqueue_many's batch and send.
    big = enqueue_many([job.message_with_options(args=("big", n), tenant="big") for n in range(1000)], broker=broker)
    small = [job.send_with_options(args=("small", n), tenant="small") for n in range(20)]
    big_ids, small_ids = [m.message_id for m in big], [m.message_id for m in small]
    selection = QueuedJobFilter(tenant="big")

    dry = cancel_queued(store, audit, selection, who="tester", dry_run=True)
    assert (dry.matched, dry.cancelled, dry.dry_run) == (1000, 0, True)
    assert set(states_of(store, big_ids + small_ids)) == {"PENDING"}
    assert audit.list() == []

    done = cancel_queued(store, audit, selection, who="tester")
    assert done.as_json() == {"filter": {"tenant": "big"}, "matched": 1000, "cancelled": 1000, "dry_run": False}
    assert set(states_of(store, big_ids)) == {"REVOKED"}
    assert set(states_of(store, small_ids)) == {"PENDING"}
    [entry] = audit.list()
    assert (entry.who, entry.what, entry.filter, entry.count) == ("tester", "jobs.cancel", {"tenant": "big"}, 1000)
    # Nothing is left to cancel: a second run matches none (and is a second entry).
    assert cancel_queued(store, audit, selection, who="tester").cancelled == 0

    worker = start_worker(threads=4)
    wait_for(lambda: set(states_of(store, small_ids)) == {"SUCCESS"}, timeout=60)
    broker.join(queue_name, timeout=60_000)
    worker.join()
    assert sorted(ran) == [("small", n) for n in range(20)]
    assert set(states_of(store, big_ids)) == {"REVOKED"}
    record = store.get(big_ids[0])
    assert record is not None
    # The worker's skip does not write REVOKED a second time.
    assert [change.state for change in record.history] == [JobState.PENDING, JobState.REVOKED]
    assert record.cancel_requested


@pytest.mark.parametrize("broker_kind", ["redis"])
def test_filters_select_by_queue_actor_level_and_enqueue_time(store: JobStatusStore) -> None:
    start = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    now = [start]
    store.clock = lambda: now[0]
    jobs = {
        "old-high": ("mail", "send", "acme", 2),
        "old-low": ("mail", "send", "acme", 4),
        "old-other-actor": ("mail", "digest", "acme", 2),
    }
    for job, (queue, actor, tenant, level) in jobs.items():
        store.enqueued(job, actor, queue, tenant, level)
    now[0] = start + dt.timedelta(hours=1)
    store.enqueued("new-high", "send", "mail", "acme", 2)
    store.enqueued("elsewhere", "send", "reports", "acme", 2)
    store.enqueued("running", "send", "mail", "acme", 2)
    store.finish("running", JobState.STARTED, "send", "mail")
    store.enqueued("retrying", "send", "mail", "acme", 2)
    store.finish("retrying", JobState.RETRY, "send", "mail")

    def found(**given: str) -> set[str]:
        return {job.id for job in QueuedJobs(store).find(queued_job_filter(**given))}

    assert found(queue="mail") == {"old-high", "old-low", "old-other-actor", "new-high", "retrying"}
    assert found(queue="mail", actor="send", level="high") == {"old-high", "new-high", "retrying"}
    assert found(level="4") == {"old-low"}
    assert found(queue="mail", before="2026-12-01T12:30:00Z") == {"old-high", "old-low", "old-other-actor"}
    assert found(tenant="nobody") == set()
    # A job that started meanwhile is left alone by the revoke, even when it was selected.
    revoked = QueuedJobs(store).revoke(["old-high", "running", "unknown"])
    assert revoked == ["old-high"]
    assert states_of(store, ["old-high", "running"]) == ["REVOKED", "STARTED"]


def test_filter_words_are_checked_with_one_line_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"^level: 'urgent' is not a priority level"):
        queued_job_filter(level="urgent")
    with pytest.raises(ValueError, match=r"^before: 'yesterday' is neither a duration"):
        queued_job_filter(before="yesterday")
    now = dt.datetime(2026, 12, 6, 10, 0, tzinfo=dt.UTC)
    assert parse_before("15m", now) == now - dt.timedelta(minutes=15)
    assert parse_before("2026-12-06T09:00:00", now) == dt.datetime(2026, 12, 6, 9, 0, tzinfo=dt.UTC)
    assert queued_job_filter(level="HIGH").level == 2
    with pytest.raises(ValueError, match="give at least one"):
        cancel_queued(None, None, QueuedJobFilter(), who="x")  # type: ignore[arg-type]


@pytest.mark.parametrize("broker_kind", ["redis"])
def test_cli_bulk_cancel_and_audit_json_shapes(
    store: JobStatusStore, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(3):
        store.enqueued(f"job-{n}", "send", "mail", "acme", 3)
    store.enqueued("kept", "send", "mail", "globex", 3)

    assert main(["jobs", "cancel", "--tenant", "acme", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "filter": {"tenant": "acme"},
        "matched": 3,
        "cancelled": 0,
        "dry_run": True,
    }
    # Without --yes nothing happens: the count and how to go ahead, on one line, exit 1.
    assert main(["jobs", "cancel", "--tenant", "acme"]) == 1
    assert capsys.readouterr().err == "fairway: 3 queued job(s) match; pass --yes to cancel them (or --dry-run)\n"
    assert main(["jobs", "cancel", "--tenant", "acme", "--level", "normal", "--yes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "filter": {"tenant": "acme", "level": 3},
        "matched": 3,
        "cancelled": 3,
        "dry_run": False,
    }
    assert states_of(store, ["job-0", "job-1", "job-2", "kept"]) == ["REVOKED"] * 3 + ["PENDING"]

    assert main(["audit", "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert set(entry) == {"id", "who", "what", "filter", "count", "when"}
    assert (entry["what"], entry["filter"], entry["count"]) == ("jobs.cancel", {"tenant": "acme", "level": 3}, 3)
    assert entry["who"].endswith("(cli)")
    assert main(["audit"]) == 0
    assert "jobs.cancel" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["audit", "--limit", "0"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "fairway audit: error: --limit: '0' is not a positive whole number\n"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--level", "urgent"], "fairway jobs cancel: error: level: 'urgent' is not a priority level"),
        (["--before", "yesterday"], "fairway jobs cancel: error: before: 'yesterday' is neither a duration"),
        (["some-id", "--tenant", "acme"], "fairway jobs cancel: error: give a job id or a filter, not both"),
        ([], "fairway jobs cancel: error: give a job id (ID) or a filter"),
    ],
)
def test_cli_bad_input_is_one_line_naming_the_field(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["jobs", "cancel", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line)
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_single_cancel_is_audited_and_a_refused_one_is_not(
    broker: Broker, queue_name: str, store: JobStatusStore, audit: AuditLog, cli_env: None
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def later() -> None: ...

    message = later.send()
    assert main(["jobs", "cancel", message.message_id]) == 0
    [entry] = audit.list()
    assert (entry.what, entry.filter, entry.count) == ("jobs.cancel", {"id": message.message_id}, 1)
    store.finish(message.message_id, JobState.SUCCESS, "later", queue_name)
    assert main(["jobs", "cancel", message.message_id]) == 1  # already finished: refused, not recorded
    assert len(audit.list()) == 1


@pytest.mark.parametrize("broker_kind", ["redis"])
def test_cli_dlq_purge_and_queue_pause_are_audited(
    settings: Settings, audit: AuditLog, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from ..store.test_dlq_store import record

    dead_letters = DeadLetterStore(settings)
    for n in range(3):
        dead_letters.add(record(f"dead-{n}", tenant="acme"))
    # Counting without --yes changes nothing and records nothing.
    assert main(["dlq", "purge", "--tenant", "acme"]) == 1
    assert audit.list() == []
    assert main(["dlq", "purge", "--tenant", "acme", "--yes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"purged": 3}
    assert main(["pause", "--create", "mail"]) == 0
    purge, pause = reversed(audit.list())
    assert (purge.what, purge.filter, purge.count) == ("dlq.purge", {"tenant": "acme"}, 3)
    assert (pause.what, pause.filter, pause.count) == ("queues.pause", {"queue": "mail"}, 1)
    assert main(["resume", "mail"]) == 0


@pytest.mark.parametrize("broker_kind", ["redis"])
def test_workers_read_a_long_bulk_cancel_stream_whole_once(
    store: JobStatusStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status, "CANCELLED_KEPT", 5)
    monkeypatch.setattr(status_bulk, "CANCELLED_KEPT", 5)
    ids = [f"job-{n}" for n in range(30)]
    store.enqueued_many([(job, "send", "mail", "acme", 3) for job in ids])
    assert len(QueuedJobs(store).revoke(ids)) == 30
    read: list[int] = []
    cancelled_after = store.cancelled_after

    def counting(stream_id: str | None) -> tuple[list[str], str | None]:
        found, last = cancelled_after(stream_id)
        read.append(len(found))
        return found, last

    monkeypatch.setattr(store, "cancelled_after", counting)
    copy = status.CancelledJobs(store)
    copy.refresh()
    copy.refresh()
    copy.refresh()
    # The bulk's 30 entries (six times the cap) are all kept for the workers, read once.
    assert read == [30, 0, 0]
    assert all(job in copy for job in ids)
