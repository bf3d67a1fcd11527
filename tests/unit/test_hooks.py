"""OverriddenHooks: the fairway brokers' emit calls only overridden hooks, with Dramatiq's semantics."""

from __future__ import annotations

from typing import Any

import pytest
from dramatiq import Middleware
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import MiddlewareError

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
