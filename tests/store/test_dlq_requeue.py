"""Requeue keeps every job: a ``unique_key`` job runs again, and a record outlives a refused enqueue."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
from dramatiq import Broker, Message, Worker

from dramatiq_fairway.cli import main
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.dead_letters import DeadLetterStore

from ..support.helpers import settings_env, wait_for


def _failing_once(broker: Broker, queue_name: str) -> tuple[dramatiq.Actor[Any, Any], list[bool], list[str]]:
    fixed: list[bool] = []
    done: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0, unique_key=lambda order: f"order-{order}")
    def settle(order: str) -> None:
        if not fixed:
            raise TimeoutError("ledger timed out")
        done.append(order)

    return settle, fixed, done


def test_requeue_runs_a_unique_key_job_again(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    settle, fixed, done = _failing_once(broker, queue_name)
    first = settle.send("a")
    per_message = settle.send_with_options(args=("b",), unique_key="nightly-b")
    start_worker()
    store = DeadLetterStore(settings)
    wait_for(lambda: store.get(first.message_id) and store.get(per_message.message_id))
    fixed.append(True)

    result = store.requeue(broker, [first.message_id, per_message.message_id])

    assert result.skipped == []
    wait_for(lambda: sorted(done) == ["a", "b"])
    assert store.get(first.message_id) is None
    assert store.get(per_message.message_id) is None
    # The key still refuses a real duplicate: only the requeued copy took it over.
    settle.send("a")
    broker.join(queue_name, timeout=10_000)
    assert sorted(done) == ["a", "b"]


@pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)
def test_the_cli_requeue_runs_a_unique_key_job_again(  # noqa: PLR0917 (fixtures)
    broker: Broker,
    settings: Settings,
    queue_name: str,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    settle, fixed, done = _failing_once(broker, queue_name)
    message = settle.send("c")
    start_worker()
    store = DeadLetterStore(settings)
    wait_for(lambda: store.get(message.message_id))
    fixed.append(True)
    capsys.readouterr()

    assert main(["dlq", "requeue", message.message_id, "--json"]) == 0

    assert [item["id"] for item in json.loads(capsys.readouterr().out)["requeued"]] == [message.message_id]
    wait_for(lambda: done == ["c"])
    assert store.get(message.message_id) is None


class _RefusingBroker:
    """Wraps a real broker; refuses the enqueue of the messages requeued from ``refused``."""

    def __init__(self, broker: Broker, refused: set[str]) -> None:
        self.broker = broker
        self.refused = refused

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        if message.options.get("requeued_from") in self.refused:
            raise ConnectionError("broker went away")
        return self.broker.enqueue(message, delay=delay)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.broker, name)


def test_a_record_stays_when_the_broker_refuses_its_message(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    settle, fixed, done = _failing_once(broker, queue_name)
    refused, accepted = settle.send("d"), settle.send("e")
    start_worker()
    store = DeadLetterStore(settings)
    wait_for(lambda: store.get(refused.message_id) and store.get(accepted.message_id))
    fixed.append(True)

    flaky: Any = _RefusingBroker(broker, {refused.message_id})
    result = store.requeue(flaky, [refused.message_id, accepted.message_id])

    assert [item.id for item in result.requeued] == [accepted.message_id]
    assert [item.id for item in result.skipped] == [refused.message_id]
    assert "broker went away" in result.skipped[0].reason
    assert store.get(refused.message_id) is not None
    wait_for(lambda: done == ["e"])
    assert store.get(accepted.message_id) is None
