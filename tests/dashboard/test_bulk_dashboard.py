"""The dashboard's bulk actions and audit page (dashboard/bulk.py): dry run then confirmation,
CSRF, read-only mode, the rate limit per user, and the audit page's escaping."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from pathlib import Path

import redis
from dramatiq import Broker, Worker

from dramatiq_fairway.dashboard.bulk import BULK_REQUESTS_PER_MINUTE, BulkRateLimit
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.audit import AuditLog
from dramatiq_fairway.store.dead_letters import DeadLetterFilter, DeadLetterStore
from dramatiq_fairway.store.status import JobStatusStore

from ..support.dashboard_support import (
    act,
    client_for,
    csrf_token,
    dashboard_settings,
    dead_letters_of,
    declare_failing,
)

SCRIPT = "<script>alert('owned')</script>"
BASIC_OPS = {"Authorization": "Basic " + base64.b64encode(b"ops:pa55-w0rd!").decode()}


def queued(settings: Settings, tenant: str, count: int) -> list[str]:
    store = JobStatusStore.from_settings(settings)
    ids = [f"{tenant}-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for job in ids:
        store.enqueued(job, "send", "mail", tenant, 3)
    return ids


def states(settings: Settings, ids: list[str]) -> set[str]:
    store = JobStatusStore.from_settings(settings)
    return {record.state.value for job in ids if (record := store.get(job)) is not None}


def test_bulk_cancel_counts_first_then_cancels_once_confirmed(redis_settings: Settings, redis_broker: Broker) -> None:
    acme, globex = queued(redis_settings, "acme", 3), queued(redis_settings, "globex", 2)
    client = client_for(redis_settings, redis_broker)
    assert 'action="/bulk/cancel"' in client.get("/bulk").text

    preview = act(client, "/bulk/cancel", {"tenant": "acme", "before": "2020-01-01T00:00:00Z", "level": "normal"})
    assert preview.status_code == 200
    assert "0 queued job(s) match" in preview.text  # all were enqueued after that
    preview = act(client, "/bulk/cancel", {"tenant": "acme"})
    assert "3 queued job(s) match" in preview.text
    assert 'name="confirm" value="yes"' in preview.text
    assert 'name="tenant" value="acme"' in preview.text
    assert states(redis_settings, acme + globex) == {"PENDING"}
    assert AuditLog.from_settings(redis_settings).list() == []

    done = act(client, "/bulk/cancel", {"tenant": "acme", "confirm": "yes"})
    assert "3 queued job(s) cancelled" in done.text
    assert states(redis_settings, acme) == {"REVOKED"}
    assert states(redis_settings, globex) == {"PENDING"}
    [entry] = AuditLog.from_settings(redis_settings).list()
    assert (entry.what, entry.filter, entry.count) == ("jobs.cancel", {"tenant": "acme"}, 3)
    assert entry.who == "anonymous@testclient (dashboard)"
    page = client.get("/audit").text
    assert "jobs.cancel" in page
    assert "tenant=acme" in page


def test_bad_filter_values_are_one_line_400s(redis_settings: Settings, redis_broker: Broker) -> None:
    client = client_for(redis_settings, redis_broker)
    response = act(client, "/bulk/cancel", {"level": "urgent"})
    assert response.status_code == 400
    assert "level: &#39;urgent&#39; is not a priority level" in response.text
    assert act(client, "/bulk/cancel", {}).status_code == 400
    assert act(client, "/bulk/requeue", {}).status_code == 400


def test_bulk_posts_need_a_csrf_token(redis_settings: Settings, redis_broker: Broker) -> None:
    ids = queued(redis_settings, "acme", 2)
    client = client_for(redis_settings, redis_broker)
    csrf_token(client)
    for path in ("/bulk/cancel", "/bulk/requeue"):
        response = client.post(path, data={"tenant": "acme", "confirm": "yes"})
        assert response.status_code == 403
        assert "CSRF" in response.text
        assert client.post(path, data={"tenant": "acme", "confirm": "yes", "csrf": "0" * 64}).status_code == 403
    assert states(redis_settings, ids) == {"PENDING"}
    assert AuditLog.from_settings(redis_settings).list() == []


def test_read_only_mode_refuses_bulk_actions(
    namespace: str, short_tmp: Path, state_client: redis.Redis, redis_broker: Broker
) -> None:
    settings = dashboard_settings("redis", namespace, short_tmp, read_only=True)
    ids = queued(settings, "acme", 2)
    client = client_for(settings, redis_broker)
    page = client.get("/bulk").text
    assert 'method="post"' not in page
    assert "csrf" not in page
    response = client.post("/bulk/cancel", data={"tenant": "acme", "confirm": "yes", "csrf": "x"})
    assert response.status_code == 403
    assert "read-only" in response.text
    assert client.post("/bulk/requeue", data={"queue": "q", "confirm": "yes"}).status_code == 403
    assert states(settings, ids) == {"PENDING"}
    assert client.get("/audit").status_code == 200


def test_bulk_requests_are_rate_limited_per_user(
    namespace: str, short_tmp: Path, state_client: redis.Redis, redis_broker: Broker
) -> None:
    settings = dashboard_settings("redis", namespace, short_tmp, username="ops", password="pa55-w0rd!")
    queued(settings, "acme", 1)
    client = client_for(settings, redis_broker, headers=BASIC_OPS)
    for _ in range(BULK_REQUESTS_PER_MINUTE):
        assert act(client, "/bulk/cancel", {"tenant": "acme"}).status_code == 200
    refused = act(client, "/bulk/cancel", {"tenant": "acme", "confirm": "yes"})
    assert refused.status_code == 429
    assert f"at most {BULK_REQUESTS_PER_MINUTE} bulk requests a minute per user" in refused.text
    assert AuditLog.from_settings(settings).list() == []


def test_rate_limit_frees_a_slot_as_the_window_slides() -> None:
    now = [0.0]
    limit = BulkRateLimit(2, window=60, clock=lambda: now[0])
    assert limit.admit("ops") == limit.admit("ops") == 0
    assert limit.admit("ops") == 60
    assert limit.admit("dev") == 0  # per user
    now[0] = 30
    assert limit.admit("ops") == 30
    now[0] = 60
    assert limit.admit("ops") == 0


def test_audit_page_escapes_a_malicious_filter_value(
    namespace: str, short_tmp: Path, state_client: redis.Redis, redis_broker: Broker
) -> None:
    settings = dashboard_settings("redis", namespace, short_tmp, username="ops", password="pa55-w0rd!")
    queued(settings, SCRIPT, 1)
    client = client_for(settings, redis_broker, headers=BASIC_OPS)
    preview = act(client, "/bulk/cancel", {"tenant": SCRIPT})
    assert SCRIPT not in preview.text
    assert "1 queued job(s) match" in preview.text
    assert "1 queued job(s) cancelled" in act(client, "/bulk/cancel", {"tenant": SCRIPT, "confirm": "yes"}).text
    page = client.get("/audit").text
    assert SCRIPT not in page
    assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in page
    assert "ops (dashboard)" in page


def test_dead_letter_requeue_by_filter_counts_then_requeues_and_is_audited(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    explode = declare_failing(broker, queue_name)
    for n in range(3):
        explode.send(f"boom {n}")
    start_worker()
    dead_letters_of(settings, 3, queue=queue_name)
    client = client_for(settings, broker)
    preview = act(client, "/bulk/requeue", {"queue": queue_name, "priority": "LOW"})
    assert "3 dead letter(s) match" in preview.text
    assert len(DeadLetterStore(settings).list(DeadLetterFilter(queue=queue_name))) == 3
    done = act(client, "/bulk/requeue", {"queue": queue_name, "priority": "LOW", "confirm": "yes"})
    assert "3 dead letter(s) requeued at LOW" in done.text
    [entry] = AuditLog.from_settings(settings).list()
    assert (entry.what, entry.count) == ("dlq.requeue", 3)
    assert entry.filter == {"queue": queue_name, "priority": "LOW"}
    # The requeued jobs fail again (same actor): three new records, as the verb would leave.
    dead_letters_of(settings, 3, queue=queue_name)
