"""The web dashboard over Starlette's TestClient, on real Redis and real RabbitMQ with real jobs.

Pages must show what real jobs left behind; each action must change state exactly as the
matching `fairway` verb does (the same action is done once through the dashboard and once through
the verb's function, and the two results are compared); the guards (CSRF, basic auth, read-only
mode, the bind rule) refuse what they must; whatever a job controls is shown escaped.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
import markupsafe
import pytest
import redis
from dramatiq import Broker, Worker
from dramatiq.middleware import CurrentMessage

from dramatiq_fairway import cli
from dramatiq_fairway.brokers import build_broker
from dramatiq_fairway.cli import breakers as breakers_cli
from dramatiq_fairway.cli import dashboard as dashboard_cli
from dramatiq_fairway.cli import dlq as dlq_cli
from dramatiq_fairway.cli import jobs as jobs_cli
from dramatiq_fairway.cli import queues as queues_cli
from dramatiq_fairway.cli.output import CommandError
from dramatiq_fairway.dashboard.charts import trend_bars
from dramatiq_fairway.dashboard.security import check_bind
from dramatiq_fairway.errors import ConfigError, TransientError
from dramatiq_fairway.ops.controls import paused_queues
from dramatiq_fairway.ops.history import History
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import DashboardSettings, Settings
from dramatiq_fairway.setup import install
from dramatiq_fairway.store.breakers import RedisBreakerStore
from dramatiq_fairway.store.dead_letters import Bucket, DeadLetterStore, RedactedRecords
from dramatiq_fairway.store.status import JobState, JobStatusStore
from dramatiq_fairway.store.workers import WorkerInfo, WorkerRegistry

from ..conftest import _delete_queues as delete_queues
from ..support.dashboard_support import (
    act,
    cli_args,
    client_for,
    csrf_token,
    dashboard_settings,
    dead_letters_of,
    declare_failing,
    workers_exporter,
)
from ..support.helpers import free_port, settings_env, wait_for

SCRIPT = "<script>alert('owned')</script>"
HOUR = timedelta(hours=1)


@pytest.fixture
def settings(broker_kind: str, namespace: str, short_tmp: Path, state_client: redis.Redis) -> Settings:
    return dashboard_settings(broker_kind, namespace, short_tmp, metrics_port=free_port())


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `fairway` verbs read FAIRWAY_* from the environment: point them at the test's settings."""
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def producer(settings: Settings) -> Iterator[Broker]:
    """A second broker with the fairway stack, as a web application sending jobs has; no worker uses it."""
    broker = install(build_broker(settings), settings)
    yield broker
    delete_queues(broker, settings)
    broker.close()


# -- pages ---------------------------------------------------------------------------------------


def test_every_page_shows_what_real_jobs_left(
    broker: Broker,
    settings: Settings,
    queue_name: str,
    start_worker: Callable[..., Worker],
    producer: Broker,
) -> None:
    ran: list[int] = []
    dependency = f"dep-{uuid.uuid4().hex[:6]}"

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def work(n: int) -> None:
        ran.append(n)

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0, breaker=dependency)
    def call_dependency() -> None:
        raise TransientError("dependency timed out")

    explode = declare_failing(broker, queue_name)
    # Declared on the producer only: no worker consumes this queue, so its jobs stay in the backlog.
    backlog_queue = f"{queue_name}_later"

    @dramatiq.actor(broker=producer, queue_name=backlog_queue)
    def later() -> None: ...

    with workers_exporter(broker, settings.metrics.port):
        start_worker()
        done = [work.send_with_options(args=(n,), tenant="acme" if n % 2 else "globex") for n in range(6)]
        explode.send_with_options(args=("disk full on volume 7",), tenant="acme")
        call_dependency.send()
        for _ in range(3):
            later.send_with_options(tenant="initech")
        wait_for(lambda: len(ran) == 6)
        (record,) = dead_letters_of(settings, 1, queue=queue_name, reason="permanent")
        wait_for(lambda: (b := RedisBreakerStore.from_settings(settings).get(dependency)) and b.state == "open")
        dead_letters_of(settings, 2, queue=queue_name)
        wait_for(lambda: sum(row.finished or 0 for row in History.from_settings(settings).stats(HOUR)) == 8)
        # The dashboard as an application embedding it runs it: sharing its producer's broker.
        client = client_for(settings, producer)

        overview = client.get("/")
        assert overview.status_code == 200
        assert re.search(rf'data-queue="{backlog_queue}"><td>[^<]*</td><td class="num ready">3<', overview.text)
        dead = rf'data-queue="{queue_name}">.*?<a href="/dead-letters\?queue={queue_name}">2<'
        assert re.search(dead, overview.text, re.S)
        assert dependency in overview.text  # open breakers
        assert "dead lettered 2" in overview.text
        assert "success 6" in overview.text
        if settings.broker == "redis":
            assert re.search(r"<td>NORMAL</td><td>initech</td>\s*<td class=\"num\">3</td>", overview.text)
            assert "no live workers" not in overview.text
        live = client.get("/?fragment=live")
        assert 'id="backlog-total">3<' in live.text
        assert "<html" not in live.text

        tenants = client.get("/tenants").text
        # acme: jobs 1, 3, 5 and the one that exploded; globex: 0, 2, 4. Weight of acme: 2.
        assert re.search(r'<td>acme</td><td class="num">[-0-9]+</td><td class="num">4</td>', tenants)
        assert re.search(r'<td>globex</td><td class="num">[-0-9]+</td><td class="num">3</td>', tenants)
        assert '<td class="num">2.0</td>' in tenants

        page = client.get("/dead-letters", params={"queue": queue_name}).text
        assert f'data-fingerprint="{record.fingerprint}"' in page
        assert "disk full on volume 7" in page
        assert "<rect" in page
        detail = client.get(f"/dead-letters/{record.id}").text
        assert "PermanentError" in detail
        assert "Traceback" in detail

        assert re.search(rf'data-key="{dependency}">.*?badge open', client.get("/breakers").text, re.S)
        job = client.get(f"/jobs/{done[0].message_id}")
        assert job.status_code == 200
        assert 'id="job-state">SUCCESS<' in job.text
        assert "STARTED" in job.text
        assert "PENDING" in job.text
        assert client.get("/jobs", params={"id": done[0].message_id}, follow_redirects=False).status_code == 303
        assert client.get("/jobs/no-such-job").status_code == 404
        assert f'data-queue="{backlog_queue}"' in client.get("/queues").text
        assert client.get("/healthz").json() == {"status": "ok"}
        assert "python_info" in client.get("/metrics").text


def test_injection_is_shown_as_text(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    explode = declare_failing(broker, queue_name)
    start_worker()
    explode.send_with_options(args=(f"bad input {SCRIPT}",), tenant=SCRIPT)
    (record,) = dead_letters_of(settings, 1, queue=queue_name)
    client = client_for(settings, broker)
    escaped = str(markupsafe.escape(SCRIPT))  # &lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;
    for page in ("/dead-letters", f"/dead-letters/{record.id}", f"/dead-letters?tenant={SCRIPT}"):
        text = client.get(page).text
        assert "<script>alert" not in text, page
        assert escaped in text, page


# -- actions, each compared with its `fairway` verb ------------------------------------------------


def test_pause_and_resume_act_as_the_verbs(broker: Broker, settings: Settings, queue_name: str, cli_env: None) -> None:
    by_page, by_verb = f"{queue_name}_page", f"{queue_name}_verb"
    client = client_for(settings, broker)
    broker.declare_queue(by_page)

    assert "paused" in act(client, f"/queues/{by_page}/pause").text
    queues_cli.pause(cli_args(queue=by_verb, create=True))
    paused = paused_queues(broker, settings)
    assert {by_page, by_verb} <= paused
    assert "was already paused" in act(client, f"/queues/{by_page}/pause").text

    assert "resumed" in act(client, f"/queues/{by_page}/resume").text
    queues_cli.resume(cli_args(queue=by_verb))
    assert not {by_page, by_verb} & paused_queues(broker, settings)


def test_breaker_actions_act_as_the_verbs(settings: Settings, broker: Broker, cli_env: None) -> None:
    store = RedisBreakerStore.from_settings(settings)
    client = client_for(settings, broker)
    by_page, by_verb = f"page-{uuid.uuid4().hex[:6]}", f"verb-{uuid.uuid4().hex[:6]}"

    def same() -> None:
        page, verb = store.get(by_page), store.get(by_verb)
        assert page is not None
        assert verb is not None
        assert page.model_dump(exclude={"key", "opened_at"}) == verb.model_dump(exclude={"key", "opened_at"})

    assert "is open (forced)" in act(client, f"/breakers/{by_page}/open").text
    breakers_cli.open_breaker(cli_args(key=by_verb))
    same()
    assert "is closed" in act(client, f"/breakers/{by_page}/close").text
    breakers_cli.close_breaker(cli_args(key=by_verb))
    same()
    act(client, f"/breakers/{by_page}/reset")
    breakers_cli.reset_breaker(cli_args(key=by_verb))
    assert store.get(by_page) is None
    assert store.get(by_verb) is None
    # Like the verbs, close and reset name an unknown breaker instead of creating it.
    assert act(client, f"/breakers/{by_page}/close").status_code == 404
    with pytest.raises(CommandError):
        breakers_cli.close_breaker(cli_args(key=by_verb))


def test_cancel_acts_as_the_verb(broker: Broker, settings: Settings, queue_name: str, cli_env: None) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def idle() -> None: ...

    by_page, by_verb = idle.send(), idle.send()  # no worker: both stay PENDING
    client = client_for(settings, broker)
    assert "cancel requested" in act(client, f"/jobs/{by_page.message_id}/cancel").text
    jobs_cli.cancel(cli_args(id=by_verb.message_id))
    store = JobStatusStore.from_settings(settings)
    page, verb = store.get(by_page.message_id), store.get(by_verb.message_id)
    assert page is not None
    assert verb is not None
    assert (page.state, page.cancel_requested) == (verb.state, verb.cancel_requested) == (JobState.PENDING, True)
    assert act(client, "/jobs/no-such-job/cancel").status_code == 404
    store.progress(by_page.message_id, 40, "halfway <b>there</b>")
    page_html = client.get(f"/jobs/{by_page.message_id}").text
    assert "40.0%" in page_html
    assert "halfway &lt;b&gt;there&lt;/b&gt;" in page_html
    assert "cancel requested" in page_html


def test_requeue_and_purge_act_as_the_verbs(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker], cli_env: None
) -> None:
    failing = {"on": True}
    runs: list[dict[str, Any]] = []
    broker.add_middleware(CurrentMessage())

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def flaky(kind: str) -> None:
        if failing["on"]:
            raise ValueError(f"cannot parse {kind} header")
        message = CurrentMessage.get_current_message()
        assert message is not None
        runs.append({"kind": kind, **message.options})

    start_worker()
    for kind in ("alpha", "beta", "gamma", "delta"):
        flaky.send(kind)
    records = dead_letters_of(settings, 4, queue=queue_name)
    by_kind = {r.args[0]: r for r in records}
    assert len({r.fingerprint for r in records}) == 4
    client = client_for(settings, broker)

    # Requeue at LOW: one group by fingerprint through the page, one through `fairway dlq requeue`.
    failing["on"] = False
    done = act(client, "/dead-letters/requeue", {"fingerprint": by_kind["alpha"].fingerprint, "priority": "LOW"})
    assert "1 dead letter(s) requeued at LOW" in done.text
    dlq_cli.requeue_records(
        cli_args(fingerprint=by_kind["beta"].fingerprint, priority=Priority.LOW, rate=None, dry_run=False,
                 allow_redacted=False)
    )  # fmt: skip
    wait_for(lambda: len(runs) == 2)
    page_run, verb_run = sorted(runs, key=lambda run: run["kind"])
    for run, kind in ((page_run, "alpha"), (verb_run, "beta")):
        assert Priority.parse(run["priority_level"]) is Priority.LOW
        assert run["requeued_from"] == by_kind[kind].id
    assert page_run.keys() - {"redis_message_id"} == verb_run.keys() - {"redis_message_id"}

    # Purge by id: one through the page, one through `fairway dlq purge --yes`.
    assert "1 dead letter(s) purged" in act(client, "/dead-letters/purge", {"ids": by_kind["gamma"].id}).text
    dlq_cli.purge_records(cli_args(ids=[by_kind["delta"].id], older_than=None, yes=True))
    assert DeadLetterStore(settings).list(limit=10) == []
    assert len(runs) == 2  # purged records are not run


def test_requeue_of_redacted_records_needs_the_same_consent_as_the_verb(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker], cli_env: None
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def login(user: str, password: str) -> None:
        raise PermissionError(f"login refused for {user}")

    start_worker()
    login.send("ann", "hunter2-secret")
    (record,) = dead_letters_of(settings, 1, queue=queue_name)
    client = client_for(settings, broker)
    detail = client.get(f"/dead-letters/{record.id}").text
    assert "hunter2-secret" not in detail
    assert "password" in detail  # named among the redacted fields

    refused = act(client, "/dead-letters/requeue", {"ids": record.id})
    assert refused.status_code == 400
    assert "redacted fields (args.password); tick &#34;allow redacted&#34;" in refused.text
    with pytest.raises(RedactedRecords):
        dlq_cli.requeue_records(cli_args(ids=[record.id], priority=Priority.HIGH, rate=None, dry_run=False,
                                         allow_redacted=False))  # fmt: skip
    assert DeadLetterStore(settings).get(record.id) is not None
    done = act(client, "/dead-letters/requeue", {"ids": record.id, "allow_redacted": "on"})
    assert "1 dead letter(s) requeued at HIGH" in done.text


# -- guards --------------------------------------------------------------------------------------


def test_post_without_a_valid_csrf_token_is_refused(redis_settings: Settings, redis_broker: Broker) -> None:
    client = client_for(redis_settings, redis_broker)
    queue = f"q_{uuid.uuid4().hex[:8]}"
    assert client.post(f"/queues/{queue}/pause").status_code == 403
    assert client.post(f"/queues/{queue}/pause", data={"csrf": "0" * 64}).status_code == 403
    # A token of another session (another browser) is no good with this session's cookie.
    other = client_for(redis_settings, redis_broker)
    csrf_token(client)
    response = client.post(f"/queues/{queue}/pause", data={"csrf": csrf_token(other)})
    assert response.status_code == 403
    assert "CSRF" in response.text
    assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert queue not in paused_queues(redis_broker, redis_settings)
    redis_broker.declare_queue(queue)
    assert act(client, f"/queues/{queue}/pause").status_code == 200
    assert queue in paused_queues(redis_broker, redis_settings)


def test_credentials_are_required_when_configured(namespace: str, short_tmp: Path, state_client: redis.Redis) -> None:
    settings = dashboard_settings("redis", namespace, short_tmp, username="ops", password="pa55-w0rd!")
    client = client_for(settings)
    for path in ("/", "/dead-letters", "/metrics"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Basic")
    assert client.post("/queues/q/pause").status_code == 401
    assert client.get("/jobs", auth=("ops", "wrong")).status_code == 401
    assert client.get("/jobs", auth=("root", "pa55-w0rd!")).status_code == 401
    assert client.get("/healthz").status_code == 200
    page = client.get("/jobs", auth=("ops", "pa55-w0rd!"))
    assert page.status_code == 200
    assert "pa55-w0rd!" not in page.text


def test_read_only_mode_hides_and_refuses_actions(
    namespace: str, short_tmp: Path, state_client: redis.Redis, redis_broker: Broker
) -> None:
    settings = dashboard_settings("redis", namespace, short_tmp, read_only=True)
    client = client_for(settings, redis_broker)
    queue = f"q_{uuid.uuid4().hex[:8]}"
    redis_broker.pause(queue)  # type: ignore[attr-defined]
    RedisBreakerStore.from_settings(settings).force_open("payments")
    for page in ("/", "/queues", "/breakers", "/dead-letters"):
        text = client.get(page).text
        assert 'method="post"' not in text, page
        assert "data-confirm" not in text, page
        assert "csrf" not in text, page
    response = client.post(f"/queues/{queue}/resume", data={"csrf": "x"})
    assert response.status_code == 403
    assert "read-only" in response.text
    assert client.post("/breakers/payments/close").status_code == 403
    assert queue in paused_queues(redis_broker, settings)


def test_secrets_never_appear_on_a_page(namespace: str, short_tmp: Path, state_client: redis.Redis) -> None:
    settings = dashboard_settings("redis", namespace, short_tmp).model_copy(
        update={"broker": "rabbitmq", "rabbitmq_url": "amqp://ops:hunter2-secret@127.0.0.1:5672/%2F"}
    )
    text = client_for(settings).get("/jobs").text
    assert "hunter2-secret" not in text
    assert "amqp://ops:****@127.0.0.1:5672" in text


def test_non_loopback_bind_without_credentials_exits_1_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if dashboard_cli not in cli.VERB_MODULES:
        monkeypatch.setattr(cli, "VERB_MODULES", (*cli.VERB_MODULES, dashboard_cli))
    served: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda *_, **kwargs: served.append(kwargs))
    monkeypatch.delenv("FAIRWAY_DASHBOARD__USERNAME", raising=False)
    monkeypatch.delenv("FAIRWAY_DASHBOARD__PASSWORD", raising=False)

    assert cli.main(["dashboard", "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "0.0.0.0" in err
    assert "FAIRWAY_DASHBOARD__USERNAME" in err
    assert served == []


def test_bind_rule() -> None:
    anonymous = Settings().dashboard
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_bind(host, anonymous)
    for host in ("0.0.0.0", "::", "192.168.1.10", "dashboard.example.com"):
        with pytest.raises(ConfigError):
            check_bind(host, anonymous)
    with pytest.raises(ConfigError):
        check_bind("0.0.0.0", DashboardSettings(username="ops"))
    check_bind("0.0.0.0", DashboardSettings(username="ops", password="pw"))  # type: ignore[arg-type]


# -- the figures ---------------------------------------------------------------------------------


def test_trend_has_one_bar_per_hour_scaled_to_the_busiest() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 2, 12, 30, tzinfo=UTC)
    hour = now.replace(minute=0)
    bars = trend_bars([Bucket(start=hour, count=4), Bucket(start=hour - timedelta(hours=2), count=2)], now=now)
    assert len(bars) == 24
    assert bars[-1].height == 24
    assert bars[-3].height == 12
    assert bars[-2].height == 0
    assert bars[-1].title.endswith(": 4")


def test_overview_names_the_workers_whose_metrics_cannot_be_read(
    redis_settings: Settings, redis_broker: Broker
) -> None:
    registry = WorkerRegistry.from_settings(redis_settings)
    now = registry.clock()
    served = "http://127.0.0.1:9464/metrics"
    unserved = "unavailable: cannot listen on 127.0.0.1:9464 (FAIRWAY_METRICS__PORT=9464)"
    for pid, metrics in ((1, served), (2, unserved)):
        registry.beat(
            WorkerInfo(id=f"host:{pid}:x", host="host", pid=pid, queues=["q"], threads=1, in_flight=0, processed=0,
                       started_at=now, beat_at=now, metrics=metrics)
        )  # fmt: skip
    text = client_for(redis_settings, redis_broker).get("/?fragment=live").text
    [note] = re.findall(r'<p class="warn" id="metrics-unreadable">(.*?)</p>', text, flags=re.DOTALL)
    assert "Metrics of 1 worker(s) cannot be read" in note
    assert "<code>host:2:x</code>" in note
    assert "FAIRWAY_METRICS__PORT=9464" in note
    assert "host:1:x" not in note
