"""Where ``install()`` puts Tracing: first of all the middleware, and only when it is enabled."""

from __future__ import annotations

from pathlib import Path

import pytest
from dramatiq.brokers.stub import StubBroker

from dramatiq_fairway.middlewares.tracing import TRACE_LINK, TRACE_OPTIONS, Tracing
from dramatiq_fairway.settings import Settings, TracingSettings
from dramatiq_fairway.setup import install


def settings(tmp_path: Path, *, enabled: bool) -> Settings:
    return Settings(broker="redis", data_dir=tmp_path, tracing=TracingSettings(enabled=enabled))


def test_enabled_tracing_goes_first_of_all_the_middleware_once(tmp_path: Path) -> None:
    broker = StubBroker()
    install(broker, settings(tmp_path, enabled=True))
    install(broker, settings(tmp_path, enabled=True))
    assert isinstance(broker.middleware[0], Tracing)
    assert sum(isinstance(m, Tracing) for m in broker.middleware) == 1
    # Its options are declared, so an actor may carry a trace context it was given.
    assert {*TRACE_OPTIONS, TRACE_LINK} <= broker.actor_options


def test_tracing_is_not_in_the_stack_unless_enabled(tmp_path: Path) -> None:
    broker = StubBroker()
    install(broker, settings(tmp_path, enabled=False))
    assert not any(isinstance(m, Tracing) for m in broker.middleware)


def test_the_setting_reads_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FAIRWAY_TRACING__ENABLED", "true")
    assert Settings(data_dir=tmp_path).tracing.enabled is True
