"""A thread keeps the connection of its last pipeline for its next one (store/held_connections.py),
and that connection is checked, given back and dropped as a pool's own would be."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dramatiq_fairway.store import delete_namespace
from dramatiq_fairway.store.held_connections import checkin, checkout
from dramatiq_fairway.store.scripts import LuaScript, ScriptCall, ScriptsInFlight, run_scripts

from ..conftest import SINGLE_REDIS_URL

_INCR = LuaScript.from_text("return redis.call('INCR', KEYS[1])")


def _pool_size(pool: Any) -> tuple[int, int]:
    """(connections the pool made, connections checked out of it)."""
    return len(pool._available_connections) + len(pool._in_use_connections), len(pool._in_use_connections)


def _client() -> redis.Redis:
    # One server's pool, whatever Redis the suite runs on: a cluster client keeps none of these.
    return redis.Redis.from_url(SINGLE_REDIS_URL)


@pytest.fixture
def key(namespace: str) -> Iterator[str]:
    yield f"{namespace}:n"
    cleaner = _client()
    delete_namespace(cleaner, namespace)
    cleaner.close()


def _incr(client: redis.Redis, key: str) -> int:
    [reply] = run_scripts(client, [ScriptCall(_INCR, [key], [])])
    return int(reply)


def test_a_thread_runs_its_pipelines_on_one_connection_without_taking_it_from_the_pool(key: str) -> None:
    client = _client()
    _incr(client, key)
    client.connection_pool.get_connection = None  # type: ignore[method-assign]  # would fail if called

    assert [_incr(client, key) for _ in range(5)] == [2, 3, 4, 5, 6]
    in_flight = ScriptsInFlight(client, [ScriptCall(_INCR, [key], [])])
    assert in_flight.replies() == [7]
    assert _pool_size(client.connection_pool) == (1, 1)


def test_a_kept_connection_the_server_closed_is_reconnected(key: str) -> None:
    client, admin = _client(), _client()
    name = f"held-{uuid.uuid4().hex[:8]}"
    client.client_setname(name)  # on the connection the thread keeps from now on
    _incr(client, key)
    admin.client_kill_filter(_id=_client_id(admin, name))
    assert not [c for c in admin.client_list() if c.get("name") == name]

    assert _incr(client, key) == 2
    assert _incr(client, key) == 3


def test_a_thread_that_ends_gives_its_connection_back(key: str) -> None:
    client = _client()
    for _ in range(5):
        thread = threading.Thread(target=_incr, args=(client, key))
        thread.start()
        thread.join()

    assert int(client.get(key) or 0) == 5
    made, out = _pool_size(client.connection_pool)
    assert out == 0
    assert made == 1  # each thread took the connection the one before gave back


def test_a_second_connection_while_one_is_out_comes_from_the_pool_and_goes_back() -> None:
    pool = _client().connection_pool
    first = checkout(pool)
    second = checkout(pool)
    assert first is not second

    checkin(pool, first)
    checkin(pool, second)  # the thread keeps one already: this one goes back
    assert _pool_size(pool) == (2, 1)
    assert checkout(pool) is first


def test_a_blocking_pool_gets_its_connection_back_at_once() -> None:
    pool = redis.BlockingConnectionPool.from_url(SINGLE_REDIS_URL, max_connections=1, timeout=0.5)
    connection = checkout(pool)
    checkin(pool, connection)
    taken: list[Any] = []

    other = threading.Thread(target=lambda: taken.append(pool.get_connection()))
    other.start()
    other.join()
    assert taken == [connection]  # not kept by the first thread: the other did not wait for it


def test_a_child_process_never_uses_the_connection_its_parent_kept(key: str) -> None:
    client = _client()
    _incr(client, key)
    parent_connection = checkout(client.connection_pool)
    checkin(client.connection_pool, parent_connection)
    results: Any = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(target=_in_child, args=(client, key, results))
    child.start()
    child.join(30)

    assert results.get(timeout=5) == (2, True)
    assert _incr(client, key) == 3  # the parent's socket was not shared with the child
    assert checkout(client.connection_pool) is parent_connection


def _in_child(client: redis.Redis, key: str, results: Any) -> None:
    before = client.connection_pool.__dict__["_fairway_held"].kept.connection
    reply = _incr(client, key)
    results.put((reply, checkout(client.connection_pool) is not before))


def _client_id(admin: redis.Redis, name: str) -> str:
    [entry] = [c for c in admin.client_list() if c.get("name") == name]
    return str(entry["id"])


class _FailedOverPool(redis.ConnectionPool):
    """A pool whose connections stop being its own, as a Sentinel pool's do once the master moved."""

    moved = False

    def owns_connection(self, connection: Any) -> int:
        return 0 if self.moved else super().owns_connection(connection)


def test_a_kept_connection_the_pool_no_longer_owns_is_given_back_and_replaced() -> None:
    pool = _FailedOverPool.from_url(SINGLE_REDIS_URL)
    first = checkout(pool)
    checkin(pool, first)
    pool.moved = True
    second = checkout(pool)
    # The pool's release disconnects a connection it does not own (to the old master) ...
    assert second is not first
    assert first._sock is None
    pool.moved = False
    checkin(pool, second)
    pool.disconnect()
