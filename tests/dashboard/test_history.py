"""The history in Redis as operators read it: ``fairway stats``, the ``/api/`` twins and the charts.

Jobs run by a real worker on each broker must appear with counts equal to the jobs run, in a
dashboard created only after they ran, and again in a second dashboard instance (a restart loses
nothing: the dashboard keeps no history of its own). Whatever a job controls (actor and tenant
names) is shown escaped, on pages with data and without.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq import Broker, Worker

from dramatiq_fairway import cli
from dramatiq_fairway.ops.history import History
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.history import Finished, HistoryStore
from dramatiq_fairway.store.workers import WorkerInfo, WorkerRegistry

from ..support.dashboard_support import client_for, dashboard_settings
from ..support.helpers import settings_env, wait_for

SCRIPT = "<script>alert('owned')</script>"
HOUR = timedelta(hours=1)


def test_jobs_run_by_a_worker_appear_in_stats_and_in_a_dashboard_started_afterwards(  # noqa: PLR0917 (fixtures)
    broker: Broker,
    settings: Settings,
    queue_name: str,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def work(n: int) -> None:
        ran.append(n)
        if n % 10 == 0:
            raise ValueError("every tenth job fails")

    start_worker(threads=4)
    jobs = 40
    for n in range(jobs):
        work.send_with_options(args=(n,), tenant=SCRIPT if n % 2 else "acme")
    wait_for(lambda: len(ran) == jobs, timeout=30)
    history = History.from_settings(settings)
    wait_for(lambda: sum(row.finished or 0 for row in history.stats(HOUR, queue=queue_name)) == jobs)

    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert cli.main(["stats", "--json", "--queue", queue_name]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["key"], row["finished"], row["served"]) == (queue_name, jobs, jobs)
    assert row["failure_ratio"] == pytest.approx(4 / jobs)
    assert row["success"] + row["dead_lettered"] + row["failed"] == jobs
    assert row["wait_p95"] is not None
    assert row["runtime_p50"] is not None
    assert cli.main(["stats", "--json", "--by", "tenant", "--queue", queue_name]) == 0
    tenants = {row["key"]: row["served"] for row in json.loads(capsys.readouterr().out)}
    assert tenants == {"acme": jobs // 2, SCRIPT: jobs // 2}

    # Two dashboard instances created after the jobs ran (the second one: after a restart).
    for _ in range(2):
        client = client_for(settings, broker)
        rows = [row for row in client.get("/api/throughput?minutes=60").json() if row["queue"] == queue_name]
        assert sum(row["success"] + row["retried"] + row["dead_lettered"] + row["failed"] for row in rows) == jobs
        assert set(rows[0]) == {
            "minute",
            "queue",
            "success",
            "retried",
            "dead_lettered",
            "failed",
            "wait_p50",
            "wait_p95",
        }
        served = {row["tenant"]: row["served"] for row in client.get("/api/tenants").json()}
        assert served == {"acme": jobs // 2, SCRIPT: jobs // 2}
        overview = client.get("/").text
        assert 'id="chart-throughput"' in overview
        assert "<rect" in overview.split('id="chart-throughput"')[1].split("</figure>")[0]
        assert "Newest data: the minute from" in overview
        tenants_page = client.get("/tenants").text
        assert SCRIPT not in tenants_page
        assert "&lt;script&gt;" in tenants_page
        assert f'id="chart-tenants-{queue_name}"' in tenants_page
        actors = client.get("/actors").text
        assert 'id="chart-actors"' in actors
        assert re.search(rf"<td>{work.actor_name}</td><td class=\"num\">{jobs}</td>", actors)
        queue = client.get("/api/queues", params={"queue": queue_name}).json()
        assert (queue["queue"], queue["ready"]) == (queue_name, 0)


def test_pages_render_without_history_and_escape_what_jobs_control(
    redis_settings: Settings, state_client: redis.Redis
) -> None:
    client = client_for(redis_settings)
    empty = {page: client.get(page) for page in ("/", "/tenants", "/actors")}
    assert all(response.status_code == 200 for response in empty.values())
    assert "No job finished or started in this window" in empty["/"].text
    assert "no job finished in this window" in empty["/"].text
    assert "no job ran in this window" in empty["/actors"].text
    assert client.get("/api/throughput").json() == []

    store = HistoryStore(state_client, redis_settings.namespace)
    now = History(store).clock()
    store.add(
        Finished(now - 60 * age, "q", SCRIPT, SCRIPT, "HIGH", outcome, 12.0, 300.0)
        for age in range(5)
        for outcome in ("success", "retried", "dead_lettered")
    )
    store.sample_backlog({("q", "HIGH"): 4, ("q", SCRIPT): 2}, int(now // 60))
    for page in ("/", "/tenants", "/actors"):
        text = client.get(page).text
        assert "<script>alert" not in text, page
        assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in text, page
    overview = client.get("/").text
    for chart in ("chart-throughput", "chart-wait", "chart-backlog"):
        assert "<svg" in overview.split(f'id="{chart}"')[1].split("</figure>")[0], chart
    assert "dead lettered" in overview  # outcomes are named, not only coloured


def test_api_refuses_a_bad_parameter_in_one_line_naming_it(redis_settings: Settings) -> None:
    client = client_for(redis_settings)
    for url, field in (
        ("/api/throughput?minutes=abc", "minutes: 'abc'"),
        ("/api/throughput?minutes=0", "minutes: 0"),
        ("/api/tenants?minutes=99999", "minutes: 99999"),
        ("/api/stats?by=colour", "by: 'colour'"),
        ("/api/stats?since=3d", "since: '3d'"),
    ):
        response = client.get(url)
        assert response.status_code == 400, url
        assert response.json()["error"].startswith(field), url
    assert client.get("/api/queues?queue=nope").status_code == 404


def test_a_worker_whose_heartbeat_stopped_is_marked_not_dropped(redis_settings: Settings) -> None:
    registry = WorkerRegistry.from_settings(redis_settings)
    now = registry.clock()
    for worker_id, silent in (("alive:1", 1), ("silent:2", redis_settings.heartbeat_timeout + 30)):
        beat = now - timedelta(seconds=silent)
        registry.beat(
            WorkerInfo(id=worker_id, host="h", pid=1, queues=["q"], threads=1, in_flight=0, processed=0,
                       started_at=beat, beat_at=beat)
        )  # fmt: skip
    text = client_for(redis_settings).get("/?fragment=live").text
    assert re.search(r'<tr class="stale"><td><code>silent:2</code> <span class="badge warn">heartbeat stopped', text)
    assert "<code>alive:1</code>" in text


def test_the_json_twins_need_the_pages_credentials(namespace: str, short_tmp: Path, state_client: redis.Redis) -> None:
    settings = dashboard_settings("redis", namespace, short_tmp, username="ops", password="pa55-w0rd!")
    client = client_for(settings)
    for path in ("/api/throughput", "/api/tenants", "/api/queues", "/api/stats", "/actors"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, auth=("ops", "pa55-w0rd!")).status_code == 200, path
