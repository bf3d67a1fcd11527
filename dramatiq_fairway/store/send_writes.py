"""State-store writes that travel in the broker's enqueue pipeline (docs/design.md, "One round trip per send").

``FairRedisBroker`` opens a :class:`SendWrites` around the ``before_enqueue`` hooks of a send. A
middleware with a write to make once the message is enqueued (JobStatus's PENDING) asks
:func:`accepting` whether its client talks to the broker's own Redis server and, if so, adds its
script call (``SendWrites.add``) instead of making a round trip of its own in ``after_enqueue``.
The broker sends those calls right after its enqueue call, in the same pipeline, and only once
every hook accepted the message; an error reply of one of them is handed to its ``on_error`` (the
send still succeeds). Where no SendWrites is open (the stock brokers, ``enqueue_many``), or the
state store is another server, ``accepting`` answers None and the middleware writes as before.

``FairRabbitmqBroker`` opens one on its state-store client around the same hooks: the calls go in
the pipeline of its tenant-routing call, before the publish (the route decides where the message
is published). A publish that fails for good then runs each call's ``undo`` (JobStatus: drop the
PENDING status it wrote), so no status outlives a message that was never queued.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool

from ..redis_cluster import ClusterClient
from .scripts import ScriptCall

_servers: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()
_open: contextvars.ContextVar[SendWrites | None] = contextvars.ContextVar("fairway_send_writes", default=None)


class SendWrites:
    """The script calls riding along with one send, and who to tell when one fails.

    A plain class, and its server named only when a middleware asks (``accepting``): one is made
    per send, on the producer's hot path."""

    __slots__ = ("_client", "_server", "calls", "carried", "on_errors", "sent", "undos")

    def __init__(self, client: redis.Redis | None) -> None:
        self._client = client
        self._server: tuple[Any, ...] | None = None if client is not None else ()
        self.calls: list[ScriptCall] = []
        self.on_errors: list[Callable[[redis.RedisError], None]] = []
        self.carried: set[str] = set()
        self.undos: list[Callable[[], ScriptCall]] = []
        self.sent = False

    @property
    def server(self) -> tuple[Any, ...]:
        """``server_of`` the send's client (empty: no server, ``accepting`` answers None)."""
        if self._server is None:
            assert self._client is not None
            self._server = server_of(self._client)
        return self._server

    def takes(self, client: redis.Redis) -> bool:
        """Whether calls made through ``client`` may ride in this send's pipeline: same server."""
        if client is self._client:
            return bool(self.server)
        server = self.server
        return bool(server) and server_of(client) == server

    def add(
        self,
        message_id: str,
        call: ScriptCall,
        on_error: Callable[[redis.RedisError], None],
        undo: Callable[[], ScriptCall] | None = None,
    ) -> None:
        """Send ``call`` with this send (``accepting`` said it may), with ``undo``: the call that takes the
        write back if the message is never queued after all."""
        self.calls.append(call)
        self.on_errors.append(on_error)
        self.carried.add(message_id)
        if undo is not None:
            self.undos.append(undo)

    def decline(self) -> None:
        """The calls were not sent: each middleware writes on its own, as where no SendWrites is open."""
        self.calls.clear()
        self.on_errors.clear()
        self.carried.clear()
        self.undos.clear()

    def report(self, replies: Sequence[Any]) -> None:
        """Hand each error reply of ``calls`` (in order) to its ``on_error``."""
        for reply, on_error in zip(replies, self.on_errors, strict=True):
            if isinstance(reply, redis.RedisError):
                on_error(reply)


class _Collecting:
    """``collecting``'s context manager: a class, not a generator, for its cost on every send."""

    __slots__ = ("token", "writes")

    def __init__(self, client: redis.Redis | None) -> None:
        self.writes = SendWrites(client)

    def __enter__(self) -> SendWrites:
        self.token = _open.set(self.writes)
        return self.writes

    def __exit__(self, *_exc: object) -> None:
        _open.reset(self.token)


def collecting(client: redis.Redis | None) -> _Collecting:
    """Open a :class:`SendWrites` for a send through ``client`` in this context (None: no server, so
    ``accepting`` answers None)."""
    return _Collecting(client)


def accepting(client: Callable[[], redis.Redis]) -> SendWrites | None:
    """The open send's :class:`SendWrites` if ``client()`` talks to its server, else None (both are
    asked only while a send is open, so a middleware on another broker builds nothing)."""
    writes = _open.get()
    if writes is None or not writes.server or not writes.takes(client()):
        return None
    return writes


def rode_along(message_id: str) -> bool:
    """Whether the write for ``message_id`` went with the open send's pipeline."""
    writes = _open.get()
    return writes is not None and message_id in writes.carried


def server_of(client: redis.Redis) -> tuple[Any, ...]:
    """``_server_of(client)``, kept per client: asked on every send, and a client's pool never
    changes server."""
    try:
        return _servers[client]
    except KeyError:
        server = _servers[client] = _server_of(client)
        return server
    except TypeError:  # a client that takes no weak reference
        return _server_of(client)


def _server_of(client: redis.Redis) -> tuple[Any, ...]:
    """(host, port, unix path, db) of ``client``'s server; for a cluster, the nodes it was started
    from (a pipeline reaches every node of it); for a Sentinel master, the sentinels, the service
    and the db (both clients reach whichever master the sentinels name); empty when the pool
    cannot say."""
    if isinstance(client, ClusterClient):
        return ("cluster", *sorted(client.nodes))
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    if isinstance(pool, SentinelConnectionPool):
        if not pool.is_master:
            return ()
        sentinels = sorted(
            (
                str(sentinel.connection_pool.connection_kwargs.get("host")),
                sentinel.connection_pool.connection_kwargs.get("port"),
            )
            for sentinel in pool.sentinel_manager.sentinels
        )
        return ("sentinel", pool.service_name, *sentinels, kwargs.get("db", 0))
    if kwargs.get("host") is None and kwargs.get("path") is None:
        return ()
    return (kwargs.get("host"), kwargs.get("port"), kwargs.get("path"), kwargs.get("db", 0))
