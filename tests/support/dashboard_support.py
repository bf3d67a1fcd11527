"""Helpers for the dashboard tests: settings, a workers' metrics exporter, CSRF-aware posts, dead letters."""

from __future__ import annotations

import argparse
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dramatiq
import uvicorn
from dramatiq import Broker
from prometheus_client import start_http_server
from starlette.testclient import TestClient

from dramatiq_fairway.dashboard import create_app
from dramatiq_fairway.errors import PermanentError
from dramatiq_fairway.middlewares.metrics import find_metrics
from dramatiq_fairway.settings import (
    BreakerSettings,
    DashboardSettings,
    FairnessSettings,
    MetricsSettings,
    Settings,
)
from dramatiq_fairway.store.dead_letters import DeadLetter, DeadLetterFilter, DeadLetterStore

from ..conftest import REDIS_URL
from .helpers import free_port, wait_for

CSRF_META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]+)">')


def dashboard_settings(
    broker_kind: str,
    namespace: str,
    data_dir: Path,
    *,
    metrics_port: int = 9,
    **dashboard: Any,
) -> Settings:
    """Test settings: breakers open on the first failure, tenant ``acme`` weighs 2, our exporter port."""
    return Settings(
        broker=broker_kind,  # type: ignore[arg-type]
        namespace=namespace,
        state_url=REDIS_URL,
        data_dir=data_dir,
        breaker=BreakerSettings(minimum_calls=1, window_size=1, open_duration=600),
        fairness=FairnessSettings(weights={"acme": 2.0}),
        metrics=MetricsSettings(port=metrics_port),
        dashboard=DashboardSettings(**dashboard),
    )


@contextmanager
def workers_exporter(broker: Broker, port: int) -> Iterator[None]:
    """Serve the in-process workers' metrics as the ``dramatiq`` command's exporter would."""
    metrics = find_metrics(broker)
    assert metrics is not None
    server, thread = start_http_server(port, "127.0.0.1", registry=metrics.registry)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def client_for(settings: Settings, broker: Broker | None = None, **kwargs: Any) -> TestClient:
    return TestClient(create_app(settings, broker=broker), **kwargs)


def csrf_token(client: TestClient, page: str = "/jobs") -> str:
    """The form token of the client's session (the GET also sets the session cookie)."""
    html = client.get(page).text
    match = CSRF_META.search(html)
    assert match, f"no CSRF token on {page}"
    return match.group(1)


def act(client: TestClient, url: str, data: dict[str, Any] | None = None) -> Any:
    """POST an action as the page's form does: with the session's CSRF token."""
    return client.post(url, data={"csrf": csrf_token(client), **(data or {})})


def cli_args(**values: Any) -> argparse.Namespace:
    """The namespace a `fairway dlq` verb gets from its parser, every filter unset unless given."""
    defaults = dict.fromkeys(("queue", "actor", "error_type", "fingerprint", "tenant", "reason", "since"))
    return argparse.Namespace(**{"json": True, "ids": [], **defaults, **values})


def declare_failing(broker: Broker, queue_name: str, name: str = "") -> Callable[..., Any]:
    """An actor that fails permanently with the message it is given (one dead letter per job)."""

    def explode(message: str) -> None:
        raise PermanentError(message)

    explode.__name__ = name or f"explode_{uuid.uuid4().hex[:6]}"
    return dramatiq.actor(explode, broker=broker, queue_name=queue_name, max_retries=0)


def dead_letters_of(settings: Settings, count: int, **filters: Any) -> list[DeadLetter]:
    """Wait until ``count`` records match ``filters``; return them, newest first."""
    store = DeadLetterStore(settings)
    selection = DeadLetterFilter(**filters)

    def enough() -> list[DeadLetter] | None:
        found = store.list(selection, limit=1000)
        return found if len(found) >= count else None

    return wait_for(enough, 20)


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server on a free loopback port, in a thread; yield its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 15)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
