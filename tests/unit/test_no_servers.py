"""The fast layer's guard (tests/unit/conftest.py) refuses the servers, so a unit test cannot use one unnoticed."""

from __future__ import annotations

import socket

import pytest
import redis

from .conftest import ServerUsed


@pytest.mark.parametrize("port", [6379, 5672])
def test_a_connection_to_a_server_port_fails_loudly(port: int) -> None:
    with pytest.raises(ServerUsed, match=str(port)):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_the_redis_client_cannot_reach_the_shared_redis() -> None:
    # An AssertionError, not an OSError: the client's retries and wrapping do not swallow it.
    with pytest.raises(ServerUsed, match="6379"):
        redis.Redis.from_url("redis://127.0.0.1:6379/0").ping()


def test_a_unix_socket_fails_loudly() -> None:
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(ServerUsed, match=r"fw-redis\.sock"):
        sock.connect("/tmp/fw-redis.sock")
