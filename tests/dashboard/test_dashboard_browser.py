"""The dashboard in a real browser: Debian's chromium driven headless by Playwright (no download).

A real uvicorn server (in a thread, on a free port) serves the dashboard as `fairway dashboard`
does, with its own broker; an in-process worker runs real jobs. Screenshots are written to a
temporary directory whose path is printed (``pytest -s`` shows it); with
``FAIRWAY_UPDATE_SCREENSHOT=1`` the overview is also saved as ``docs/img/dashboard-overview.png``.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import pytest
import redis
from dramatiq import Broker, Worker

from dramatiq_fairway.dashboard import create_app
from dramatiq_fairway.errors import PermanentError
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.breakers import RedisBreakerStore
from dramatiq_fairway.store.history import Finished, HistoryStore

from ..support.dashboard_support import dashboard_settings, dead_letters_of, served, workers_exporter
from ..support.helpers import ROOT, free_port, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
JOBS = 150
README_SCREENSHOT = ROOT / "docs" / "img" / "dashboard-overview.png"


@pytest.fixture
def settings(broker_kind: str, namespace: str, short_tmp: Path, state_client: redis.Redis) -> Settings:
    return dashboard_settings(broker_kind, namespace, short_tmp, metrics_port=free_port())


@pytest.fixture
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dashboard-screenshots")
    print(f"\ndashboard screenshots: {path}")
    return path


@pytest.fixture
def page() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test-all.sh does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        yield context.new_page()
        context.close()
        browser.close()


def test_overview_follows_running_jobs_and_a_dead_letter_group_is_requeued(
    broker: Broker, settings: Settings, start_worker: Callable[..., Worker], page: object, artifacts: Path
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    fixed = threading.Event()
    # Readable names for the screenshots, unique because RabbitMQ queue names are not namespaced.
    suffix = uuid.uuid4().hex[:4]
    queue_name, io_queue, dependency = f"reports_{suffix}", f"imports_{suffix}", f"payments_api_{suffix}"

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def render_report(n: int) -> None:
        time.sleep(0.1)

    @dramatiq.actor(broker=broker, queue_name=io_queue, max_retries=0)
    def import_file(part: int) -> None:
        if not fixed.is_set():
            raise PermanentError(f"disk full while writing part {part}")

    @dramatiq.actor(broker=broker, queue_name=io_queue, max_retries=0)
    def sync_account(account: str) -> None:
        raise PermanentError(f"account {account} was deleted upstream")

    tenants = ("acme", "globex", "initech")
    levels = ("high", "normal", "normal", "low")
    for n in range(JOBS):
        render_report.send_with_options(args=(n,), tenant=tenants[n % 3], priority_level=levels[n % 4])
    for part in (1, 2):
        import_file.send_with_options(args=(part,), tenant="acme")
    sync_account.send_with_options(args=("42",), tenant="globex")
    RedisBreakerStore.from_settings(settings).force_open(dependency)

    with workers_exporter(broker, settings.metrics.port), served(create_app(settings)) as url:
        page.goto(url + "/")
        backlog = page.locator("#backlog-total")
        expect(backlog).to_have_text(str(JOBS + 3), timeout=15_000)
        page.evaluate("window.fairwayNoReload = true")

        start_worker(threads=2)
        wait_for(lambda: 0 < int(backlog.inner_text()) < JOBS, timeout=60, interval=0.2)
        assert page.evaluate("window.fairwayNoReload") is True  # the fragment was swapped in, no reload
        _until_rates_show(page)
        page.screenshot(path=artifacts / "overview-running.png", full_page=True)
        if os.environ.get("FAIRWAY_UPDATE_SCREENSHOT"):
            README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifacts / "overview-running.png", README_SCREENSHOT)
        expect(backlog).to_have_text("0", timeout=60_000)
        assert page.evaluate("window.fairwayNoReload") is True
        page.screenshot(path=artifacts / "overview-drained.png", full_page=True)
        expect(page.locator("#chart-throughput svg rect").first).to_be_visible()
        page.goto(url + "/tenants")
        expect(page.locator(f'table.tenants[data-queue="{queue_name}"] tbody tr')).to_have_count(3)
        expect(page.locator(f'[id="chart-tenants-{queue_name}"] svg rect').first).to_be_visible()
        page.screenshot(path=artifacts / "tenants.png", full_page=True)
        page.goto(url + "/actors")
        expect(page.locator("#chart-actors svg rect").first).to_be_visible()
        page.screenshot(path=artifacts / "actors.png", full_page=True)

        (disk_full, *_) = dead_letters_of(settings, 2, actor="import_file")
        dead_letters_of(settings, 1, actor="sync_account")
        page.goto(url + "/dead-letters")
        group = page.locator(f'section.group[data-fingerprint="{disk_full.fingerprint}"]')
        expect(group.locator(".count")).to_have_text("2 listed")
        expect(page.locator("section.group")).to_have_count(2)
        page.screenshot(path=artifacts / "dead-letters.png", full_page=True)

        fixed.set()  # the bug is fixed: the requeued jobs will succeed
        questions: list[str] = []

        def accept(dialog: object) -> None:
            questions.append(dialog.message)  # type: ignore[attr-defined]
            dialog.accept()  # type: ignore[attr-defined]

        page.on("dialog", accept)
        group.locator("select[name=priority]").select_option("LOW")
        group.locator("button.requeue-group").click()
        expect(page.locator("#summary")).to_have_text("2 dead letter(s) requeued at LOW, 0 skipped")
        assert questions == [f"Requeue every dead letter with fingerprint {disk_full.fingerprint}?"]
        page.screenshot(path=artifacts / "requeued.png", full_page=True)

        page.goto(url + "/dead-letters")
        expect(page.locator(f'section.group[data-fingerprint="{disk_full.fingerprint}"]')).to_have_count(0)
        expect(page.locator("section.group")).to_have_count(1)
        page.screenshot(path=artifacts / "dead-letters-after.png", full_page=True)


def test_charts_render_without_and_with_history_and_names_stay_text(
    namespace: str, short_tmp: Path, state_client: redis.Redis, page: object, artifacts: Path
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    settings = dashboard_settings("redis", namespace, short_tmp)
    with served(create_app(settings)) as url:
        for path, name in (("/", "empty-overview"), ("/tenants", "empty-tenants"), ("/actors", "empty-actors")):
            page.goto(url + path)
            expect(page.locator("main")).to_contain_text("no queues yet" if path == "/tenants" else "in this window")
            page.screenshot(path=artifacts / f"{name}.png", full_page=True)
        expect(page.locator("#chart-actors")).to_contain_text("no job ran in this window")

        store = HistoryStore(state_client, namespace)
        now = time.time()
        store.add(
            Finished(now - 60 * age, "reports", INJECTED, INJECTED, "HIGH", outcome, 30.0 * age, 200.0 + age)
            for age in range(30)
            for outcome in ("success", "success", "retried", "dead_lettered")
        )
        store.sample_backlog({("reports", "HIGH"): 12, ("reports", "LOW"): 3}, int(now // 60))
        for path, chart in (
            ("/", "#chart-throughput"),
            ("/tenants", "#chart-tenants-reports"),
            ("/actors", "#chart-actors"),
        ):
            page.goto(url + path)
            expect(page.locator(f"{chart} svg rect").first).to_be_visible()
            page.screenshot(path=artifacts / f"history{path.replace('/', '-') or '-overview'}.png", full_page=True)
            if path != "/":
                expect(page.locator(chart)).to_contain_text(INJECTED[:20])  # shown as text, clipped
        expect(page.locator("#chart-backlog svg polyline")).to_have_count(0)  # not on this page
        page.goto(url + "/")
        expect(page.locator("#chart-backlog svg polyline")).to_have_count(2)
        expect(page.locator("#chart-wait")).to_contain_text("HIGH")
        assert page.locator("script").count() == 1  # the dashboard's own; nothing injected ran
    assert alerts == []


INJECTED = "<script>alert('owned')</script>"


def _until_rates_show(page: object, patience: float = 10.0) -> None:
    """For a telling screenshot: give the dashboard time to count finished jobs (no assertion)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline and page.locator("#throughput").inner_text() == "0.0":  # type: ignore[attr-defined]
        if page.locator("#backlog-total").inner_text() == "0":  # type: ignore[attr-defined]
            return
        time.sleep(0.2)
