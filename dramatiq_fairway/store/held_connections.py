"""A connection of each Redis pool kept by each thread from one pipeline of script calls to the next.

Every pipeline of ``store/scripts.py`` (a send, a status flush, a fetch) took a connection from
the client's pool and gave it back: redis-py's ``get_connection`` and ``release`` cost 11 µs of
CPU a pipeline in a loop here, and about twice that between a send's other work (a lock, two
``getpid`` calls, its connection-state metrics, a deprecation wrapper), against a round trip of
30-60 µs (docs/benchmarks.md, "Producer"). A thread now keeps the connection it used last for
its next pipeline on the same pool; ``checkout`` checks it as the pool would (connected, nothing
left unread on it: a server that closed it is seen here, and it is reconnected).

The connection stays checked out of its pool while its thread lives and goes back to the pool
when the thread ends; it dies with the pool; in a child process after ``fork`` it is dropped
(the parent's socket: the pool makes new connections there); one the pool no longer owns (a
Sentinel pool's, to a master that moved) goes back to the pool, which disconnects it, and the
thread takes another. A thread that needs a second
connection of a pool while it holds one (a pipeline run while a send's replies are awaited)
takes it from the pool as before. A ``BlockingConnectionPool`` is left alone: it caps its
connections, and one kept by an idle thread would make another thread wait.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Any

import redis


class _Forks:
    """Bumped in a child process after fork: a connection kept before belongs to the parent."""

    generation = 0


class _Kept:
    """A thread's kept connection of one pool; back to the pool when the thread's local data goes."""

    __slots__ = ("connection", "generation", "pool")

    def __init__(self, pool: Any, connection: Any) -> None:
        self.pool = weakref.ref(pool)
        self.connection = connection
        self.generation = _Forks.generation

    def __del__(self) -> None:
        pool = self.pool()
        if pool is not None and self.connection is not None and self.generation == _Forks.generation:
            with contextlib.suppress(Exception):  # at interpreter exit the pool may be half gone
                pool.release(self.connection)


def checkout(pool: Any) -> Any:
    """A connection of ``pool`` for this thread's next pipeline: the one it kept, else the pool's."""
    held = pool.__dict__.get("_fairway_held")
    kept: _Kept | None = getattr(held, "kept", None) if held is not None else None
    if kept is None or kept.generation != _Forks.generation:
        return pool.get_connection()
    held.kept = None
    connection = kept.connection
    kept.connection = None  # taken: its __del__ must not give it back
    if not pool.owns_connection(connection):
        # A Sentinel pool disowns the connections to a master that moved, and disconnects its idle
        # ones when it learns of the move; this one was checked out, so its release does it.
        pool.release(connection)
        return pool.get_connection()
    try:
        # The pool's own check where redis-py has one (it also knows client-side caching and
        # maintenance notifications, whose pending data is not a stale connection).
        getattr(pool, "ensure_connection", _ready)(connection)
    except BaseException:
        pool.release(connection)
        raise
    return connection


def checkin(pool: Any, connection: Any) -> None:
    """Keep ``connection`` (from ``checkout(pool)``) for this thread's next pipeline on ``pool``; give
    it back to the pool when the thread keeps one already or the pool caps its connections."""
    if isinstance(pool, redis.BlockingConnectionPool):
        pool.release(connection)
        return
    held = pool.__dict__.get("_fairway_held")
    if held is None:
        held = pool.__dict__.setdefault("_fairway_held", threading.local())
    kept: _Kept | None = getattr(held, "kept", None)
    if kept is not None and kept.generation == _Forks.generation:
        pool.release(connection)
        return
    held.kept = _Kept(pool, connection)


def _ready(connection: Any) -> None:
    """Connected, with nothing unread on it: what the pool checks before it hands a connection out
    (redis-py before its ``ConnectionPool.ensure_connection``)."""
    connection.connect()
    try:
        stale = connection.can_read()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        stale = True
    if stale:
        connection.disconnect()
        connection.connect()


def _forked() -> None:
    _Forks.generation += 1


os.register_at_fork(after_in_child=_forked)
