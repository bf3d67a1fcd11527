"""``fairway migrate``: the table, the ``--json`` shape, ``--dry-run``, a second run, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq import Broker

from dramatiq_fairway.cli import main
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import Settings

from ..brokers.test_rabbitmq_fair import delete_level_queues
from ..conftest import SINGLE_REDIS_URL
from ..support.helpers import free_port, settings_env
from ..support.stock_queues import (
    URGENT,
    dead_moved_by_migrate,
    delete_stock_queues,
    fill_stock_queue,
    redeclared_by_migrate,
    stock_counts,
    stock_namespace,
)

FAILED = 1


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Stock Dramatiq runs on one Redis only: migrations run there, in a cluster run of the suite too."""
    return settings.model_copy(update={"redis_url": SINGLE_REDIS_URL})


@pytest.fixture
def fairway(
    broker: Broker,
    settings: Settings,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """Run ``fairway ARGS`` in this process with the test's settings: (exit code, stdout, stderr)."""
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    dramatiq.actor(broker=broker, queue_name=queue_name)(lambda: None)  # so the level queues are deleted too
    delete_level_queues(broker, settings)
    delete_stock_queues(settings, queue_name)


def migrate_json(fairway: Callable[..., tuple[int, str, str]], settings: Settings, *argv: str) -> list[dict[str, Any]]:
    code, out, err = fairway("migrate", "--json", "--stock-namespace", stock_namespace(settings), *argv)
    assert code == 0, err
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def test_migrate_json_reports_what_moved_per_queue_in_a_stable_shape(
    broker: Broker, settings: Settings, queue_name: str, fairway: Callable[..., tuple[int, str, str]]
) -> None:
    fill = fill_stock_queue(settings, queue_name, ready=30, delayed=4, dead=2)

    rows = migrate_json(fairway, settings, queue_name)

    assert rows == [
        {
            "queue": queue_name,
            "ready": 30,
            "delayed": 4,
            "dead": dead_moved_by_migrate(settings, queue_name, 2),
            "redeclared": redeclared_by_migrate(settings, queue_name),
        }
    ]
    assert broker.ready_by_level(queue_name) == {URGENT: len(fill.urgent), Priority.NORMAL: 30 - len(fill.urgent)}


def test_migrate_dry_run_moves_nothing_and_a_second_run_moves_nothing(
    settings: Settings, queue_name: str, fairway: Callable[..., tuple[int, str, str]]
) -> None:
    fill_stock_queue(settings, queue_name, ready=12, delayed=3, dead=0)
    before = stock_counts(settings, queue_name)

    [dry] = migrate_json(fairway, settings, "--dry-run", queue_name)
    assert (dry["ready"], dry["delayed"]) == (12, 3)
    assert stock_counts(settings, queue_name) == before

    [first] = migrate_json(fairway, settings, queue_name)
    [second] = migrate_json(fairway, settings, queue_name)
    assert (first["ready"], first["delayed"]) == (12, 3)
    assert second == {"queue": queue_name, "ready": 0, "delayed": 0, "dead": 0, "redeclared": []}


def test_migrate_prints_a_table_of_the_counts(
    settings: Settings, queue_name: str, fairway: Callable[..., tuple[int, str, str]]
) -> None:
    fill_stock_queue(settings, queue_name, ready=7, delayed=0, dead=0)

    code, out, err = fairway("migrate", "--stock-namespace", stock_namespace(settings), queue_name)

    assert code == 0, err
    assert "messages moved" in out
    [row] = [line for line in out.splitlines() if queue_name in line]
    assert row.split("│")[2].strip() == "7"


@pytest.mark.parametrize("broker_kind", ["redis"])
def test_migrate_without_queues_on_redis_finds_the_stock_queues(
    settings: Settings, queue_name: str, fairway: Callable[..., tuple[int, str, str]]
) -> None:
    """On Redis by SCAN; RabbitMQ cannot list queues over AMQP, so there it takes fairway's known ones."""
    fill_stock_queue(settings, queue_name, ready=5, delayed=1, dead=1)

    rows = migrate_json(fairway, settings)

    assert rows == [{"queue": queue_name, "ready": 5, "delayed": 1, "dead": 1, "redeclared": []}]


def test_migrate_with_the_server_down_is_one_line_and_exit_1(
    settings: Settings, fairway: Callable[..., tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    down = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("FAIRWAY_REDIS_URL", f"redis://{down}/0")
    monkeypatch.setenv("FAIRWAY_RABBITMQ_URL", f"amqp://guest:guest@{down}/%2F")

    code, out, err = fairway("migrate", "some_queue")

    assert code == FAILED
    assert "Traceback" not in out + err
    assert len(err.splitlines()) == 1, err
    assert "Connection" in err
