"""OverriddenHooks: the fairway brokers' emit calls only overridden hooks, with Dramatiq's semantics."""

from __future__ import annotations

from typing import Any

import pytest
from dramatiq import Message, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import MiddlewareError

from dramatiq_fairway.brokers.delivery import HoldsAtStart, held_at_start
from dramatiq_fairway.brokers.hooks import OverriddenHooks


class HookedStubBroker(OverriddenHooks, StubBroker):
    """Pure dispatch logic: no queue is involved."""


class Recording(Middleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def before_ack(self, broker: Any, message: Any) -> None:
        self.calls.append(f"before {self.name}")

    def after_ack(self, broker: Any, message: Any) -> None:
        self.calls.append(f"after {self.name}")


class Failing(Middleware):
    def __init__(self, error: Exception) -> None:
        self.error = error

    def before_ack(self, broker: Any, message: Any) -> None:
        raise self.error


def broker_with(*middleware: Middleware) -> HookedStubBroker:
    return HookedStubBroker(middleware=list(middleware))


def test_hooks_run_in_dramatiq_order_and_inherited_no_ops_are_skipped() -> None:
    calls: list[str] = []
    broker = broker_with(Recording("a", calls), Middleware(), Recording("b", calls))
    broker.emit_before("ack", None)
    broker.emit_after("ack", None)
    assert calls == ["before a", "before b", "after b", "after a"]
    assert [m for m, _hook in broker.hooks("before_ack")] == [broker.middleware[0], broker.middleware[2]]


def test_middleware_added_removed_or_replaced_after_an_emit_takes_effect() -> None:
    calls: list[str] = []
    broker = broker_with(Recording("a", calls))
    broker.emit_before("ack", None)
    broker.add_middleware(Recording("b", calls))
    broker.emit_before("ack", None)
    broker.middleware[0] = Recording("c", calls)
    broker.emit_before("ack", None)
    broker.middleware.pop()
    broker.emit_before("ack", None)
    assert calls == ["before a", "before a", "before b", "before c", "before b", "before c"]


def test_a_hook_set_on_the_instance_is_called() -> None:
    calls: list[str] = []
    plain = Middleware()
    plain.before_ack = lambda *_args: calls.append("instance")  # type: ignore[method-assign]
    broker_with(plain).emit_before("ack", None)
    assert calls == ["instance"]


def test_a_middleware_error_stops_the_emit_any_other_is_logged_and_the_next_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    broker = broker_with(Failing(RuntimeError("boom")), Recording("after-failure", calls))
    broker.emit_before("ack", None)
    assert calls == ["before after-failure"]
    assert "Unexpected failure in before_ack" in caplog.text

    with pytest.raises(MiddlewareError):
        broker_with(Failing(MiddlewareError("stop")), Recording("never", calls)).emit_before("ack", None)
    assert calls == ["before after-failure"]


def test_a_signal_no_middleware_knows_is_a_no_op(caplog: pytest.LogCaptureFixture) -> None:
    broker_with(Middleware()).emit_after("signal_of_another_library", None)
    assert "Unexpected failure" not in caplog.text


class Holding(Middleware):
    """Holds every message at start for ``delay`` ms (0: never); records what the hooks read."""

    def __init__(self, delay: int) -> None:
        self.delay = delay
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def hold_at_start(self, broker: Any, message: Any) -> int | None:
        return self.delay or None

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.seen.append((message.message_id, message.queue_name, message.options))


class HoldingStubBroker(HoldsAtStart, OverriddenHooks, StubBroker):
    """The worker-side dispatch of the fairway brokers, on no queue."""


def test_a_taken_message_reads_the_same_fields_and_one_held_at_start_is_marked_and_failed() -> None:
    broker, holding = HoldingStubBroker(middleware=[]), Holding(0)
    broker.add_middleware(holding)
    message = Message(queue_name="q", actor_name="a", args=(1,), kwargs={}, options={"k": 1})
    proxy = MessageProxy(message)
    broker.emit_before("process_message", proxy)
    assert holding.seen == [(message.message_id, "q", {"k": 1})]
    assert holding.seen[0][2] is message.options  # the very dict: an option set by a hook is the Message's
    assert held_at_start(proxy) is None
    assert not proxy.failed

    holding.delay = 250
    held = MessageProxy(message)
    broker.emit_before("process_message", held)
    assert held_at_start(held) == 250
    assert held.failed
    assert len(holding.seen) == 1  # no hook saw the held message
