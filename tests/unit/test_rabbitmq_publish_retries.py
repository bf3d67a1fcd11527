"""FairRabbitmqBroker.enqueue on a lost connection: retried after each short pause, then raised
(no server: the publish is replaced by one that fails as a dying node's connection does)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pika
import pytest
from dramatiq import Message
from dramatiq.errors import ConnectionClosed

from dramatiq_fairway.brokers import rabbitmq
from dramatiq_fairway.brokers.rabbitmq import PUBLISH_PAUSES, FairRabbitmqBroker
from dramatiq_fairway.settings import Settings


class FlakyPublish:
    """Fails the first ``failures`` publishes with a lost connection, then records them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[str] = []

    def __call__(self, routing_key: str, message: Message[Any], meanwhile: object = None) -> None:
        # ``meanwhile`` (the count's reply read) is left to enqueue, which runs it after a failure too.
        if self.failures:
            self.failures -= 1
            raise pika.exceptions.StreamLostError("Stream connection lost: ConnectionResetError(104)")
        self.published.append(message.message_id)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(rabbitmq, "time", SimpleNamespace(sleep=slept.append))
    return slept


def broker_with(publish: FlakyPublish, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FairRabbitmqBroker:
    broker = FairRabbitmqBroker(url="amqp://127.0.0.1:1/%2F", settings=Settings(data_dir=tmp_path), middleware=[])
    monkeypatch.setattr(broker, "declare_queue", lambda *_args, **_kwargs: None)
    monkeypatch.setattr(broker, "_publish", publish)
    return broker


def message() -> Message[Any]:
    return Message(queue_name="q", actor_name="job", args=(), kwargs={}, options={})


def test_a_publish_that_lost_its_connection_is_retried_after_short_pauses(
    pauses: list[float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish = FlakyPublish(failures=2)
    sent = broker_with(publish, tmp_path, monkeypatch).enqueue(message())
    assert publish.published == [sent.message_id]
    assert pauses == list(PUBLISH_PAUSES[:2])


def test_a_publish_still_failing_after_every_pause_raises_connection_closed(
    pauses: list[float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish = FlakyPublish(failures=len(PUBLISH_PAUSES) + 1)
    with pytest.raises(ConnectionClosed):
        broker_with(publish, tmp_path, monkeypatch).enqueue(message())
    assert publish.published == []
    assert pauses == list(PUBLISH_PAUSES)
    assert sum(PUBLISH_PAUSES) < 5
