"""The fast layer: pure logic on Dramatiq's StubBroker, no Redis and no RabbitMQ.

``pytest tests/unit`` must pass with both servers stopped. The servers of this machine are shared
and stay up, so instead every connection to their ports, and to a unix socket (the embedded Redis),
fails here, and a unit test that asks for a server fixture fails before it runs.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

SERVER_PORTS = {6379, 5671, 5672}  # Redis, AMQP over TLS, AMQP
SERVER_FIXTURES = {"broker", "broker_kind", "settings", "start_worker", "state_client"}


class ServerUsed(AssertionError):
    """A unit test reached for a server; it belongs in the folder of its module instead."""


@pytest.fixture(autouse=True)
def no_servers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    used = sorted(SERVER_FIXTURES & set(request.fixturenames))
    if used:
        raise ServerUsed(f"{request.node.nodeid} uses the server fixture(s) {', '.join(used)}")
    connect = socket.socket.connect

    def refuse_servers(sock: socket.socket, address: Any) -> None:
        if sock.family == socket.AF_UNIX or (isinstance(address, tuple) and address[1] in SERVER_PORTS):
            raise ServerUsed(f"{request.node.nodeid} connected to {address!r}")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", refuse_servers)
