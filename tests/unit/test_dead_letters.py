"""DeadLetters without a server: the reason a record gives; the rest is in tests/middlewares/test_dead_letters.py."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import SkipMessage

from dramatiq_fairway.errors import BreakerOpen, MessageTooLarge, PermanentError
from dramatiq_fairway.middlewares.dead_letters import DeadLetters
from dramatiq_fairway.settings import Settings


@pytest.mark.parametrize(
    ("options", "exception", "reason"),
    [
        ({"dead_letter_reason": "held_too_long"}, TimeoutError("x"), "held_too_long"),
        ({"failure_reason": "permanent"}, TimeoutError("x"), "permanent"),
        ({}, MessageTooLarge("2 MB"), "too_large"),
        ({"fairway_held_since": 1}, BreakerOpen("api", 0.0), "held_too_long"),
        ({}, SkipMessage(), "rejected"),
        ({}, None, "rejected"),
        ({}, PermanentError("no"), "permanent"),
        ({"retries": 4}, TimeoutError("x"), "retries_exhausted"),
    ],
)
def test_reason_is_read_from_options_and_exception(
    options: dict[str, object], exception: BaseException | None, reason: str
) -> None:
    stub = StubBroker()

    @dramatiq.actor(broker=stub, queue_name="q")
    def job() -> None: ...

    proxy = MessageProxy(Message(queue_name="q", actor_name="job", args=(), kwargs={}, options=dict(options)))
    if exception is not None:
        proxy.stuff_exception(exception)
    middleware = DeadLetters(settings=Settings(broker="redis"))
    record = middleware.build_record(stub, proxy)
    assert record.reason == reason
    assert record.retries == (3 if options.get("retries") == 4 else 0)
