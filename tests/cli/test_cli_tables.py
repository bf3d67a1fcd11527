"""Tables never cut what the next command needs (ids, fingerprints), and the demo's totals agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from dramatiq_fairway.cli import main
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.dead_letters import DeadLetter, DeadLetterStore

from ..conftest import REDIS_URL
from ..support.helpers import settings_env
from ..unit.test_cli_tables import FINGERPRINT, dead_letter


@pytest.fixture
def stored(
    namespace: str, short_tmp: Path, state_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> list[DeadLetter]:
    settings = Settings(broker="redis", namespace=namespace, state_url=REDIS_URL, data_dir=short_tmp)  # type: ignore[arg-type]
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    store = DeadLetterStore(settings)
    records = [dead_letter(), dead_letter()]
    for record in records:
        store.add(record)
    return records


def test_piped_output_prints_whole_ids_and_fingerprints(
    stored: list[DeadLetter], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "60")  # what a narrow terminal would tell rich
    capsys.readouterr()
    assert main(["dlq", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for record in stored:
        row = next(line for line in lines if record.id in line)
        assert FINGERPRINT in row
    assert "…" not in "\n".join(lines)
