"""``fairway stats`` for people: one row per key, whole names, only the columns the grouping has."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from dramatiq_fairway.cli import main
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.history import Finished, HistoryStore

from ..conftest import REDIS_URL
from ..support.helpers import settings_env

ACTOR = "reports.render_quarterly_report_for_every_region_" + "x" * 40


@pytest.fixture
def history(
    namespace: str, short_tmp: Path, state_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> HistoryStore:
    settings = Settings(broker="redis", namespace=namespace, state_url=REDIS_URL, data_dir=short_tmp)  # type: ignore[arg-type]
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    return HistoryStore(state_client, namespace)


def test_an_empty_window_says_so(history: HistoryStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--since", "15m"]) == 0
    assert capsys.readouterr().out.strip() == "nothing recorded in the last 15 min"


def test_rows_by_actor_show_whole_names_and_no_wait_columns(
    history: HistoryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    history.add(
        [Finished(now, "reports", ACTOR, "acme", "HIGH", outcome, 20.0, 90.0) for outcome in ("success", "retried")]
    )
    assert main(["stats", "--by", "actor"]) == 0
    out = capsys.readouterr().out
    assert ACTOR in out  # piped output is never cut
    assert "failure ratio" in out
    assert "50.0%" in out
    assert "wait p50" not in out  # waits are per level, not per actor
    assert main(["stats", "--by", "level"]) == 0
    out = capsys.readouterr().out
    assert "HIGH" in out
    assert "wait p50" in out
    assert "run p50" not in out
