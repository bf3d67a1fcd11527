"""A send's PENDING status (``status_enqueue.lua``): the record a bulk cancel and the status
readers expect, on which a worker's moves (``status_transition.lua``) carry on."""

from __future__ import annotations

import json

import pytest
import redis

from dramatiq_fairway.store.scripts import run_scripts
from dramatiq_fairway.store.status import JobState, JobStatusStore, iso_from_datetime

AT = "2026-12-07T05:00:00.000Z"
LATER = "2026-12-07T05:00:01.000Z"


@pytest.mark.parametrize(("tenant", "level"), [("", None), ("acme", 3), ('q"uo\\te|', 5)])
def test_a_send_writes_a_pending_record_with_its_tenant_and_level(
    state_client: redis.Redis, namespace: str, tenant: str, level: int | None
) -> None:
    store = JobStatusStore(state_client, namespace, ttl=60, failed_ttl=600)
    [reply] = run_scripts(state_client, [store.enqueued_call("sent", "job", "q", tenant, level, at=AT)])
    assert reply == b"PENDING"
    fields = {k.decode(): v.decode() for k, v in state_client.hgetall(store.job_key("sent")).items()}
    expected = {"state": "PENDING", "actor": "job", "queue": "q", "enqueued": AT}
    if tenant:
        expected |= {"tenant": tenant, "level": str(level)}
    assert json.loads(fields.pop("history")) == [{"state": "PENDING", "at": AT}]
    assert fields == expected
    assert 590 < state_client.ttl(store.job_key("sent")) <= 600


def test_a_worker_moves_on_from_a_sent_record(state_client: redis.Redis, namespace: str) -> None:
    store = JobStatusStore(state_client, namespace)
    run_scripts(state_client, [store.enqueued_call("sent", "job", "q", "acme", 2, at=AT)])
    run_scripts(
        state_client, [store.transition_call("record", "sent", [(JobState.STARTED, LATER)], actor="job", queue="q")]
    )
    record = store.get("sent")
    assert record is not None
    assert record.state is JobState.STARTED
    assert [iso_from_datetime(entry.at) for entry in record.history] == [AT, LATER]
    assert [entry.state for entry in record.history] == [JobState.PENDING, JobState.STARTED]
    assert state_client.hmget(store.job_key("sent"), "enqueued", "tenant", "level") == [AT.encode(), b"acme", b"2"]


def test_a_send_leaves_a_job_known_before_as_it_is(state_client: redis.Redis, namespace: str) -> None:
    store = JobStatusStore(state_client, namespace)
    store.enqueued("known", "job", "q")
    store.finish("known", JobState.RETRY, "job", "q")
    before = state_client.hgetall(store.job_key("known"))
    [reply] = run_scripts(state_client, [store.enqueued_call("known", "job", "q", "acme", 3, at=AT)])
    assert reply == b"RETRY"
    assert state_client.hgetall(store.job_key("known")) == before
