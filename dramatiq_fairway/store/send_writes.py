"""State-store writes that travel in the broker's enqueue pipeline (docs/design.md, "One round trip per send").

``FairRedisBroker`` opens a :class:`SendWrites` around the ``before_enqueue`` hooks of a send. A
middleware with a write to make once the message is enqueued (JobStatus's PENDING) hands its
script call to :func:`ride_along` instead of making a round trip of its own in ``after_enqueue``,
when its client talks to the broker's own Redis server. The broker sends those calls right after
its enqueue call, in the same pipeline, and only once every hook accepted the message; an error
reply of one of them is handed to its ``on_error`` (the send still succeeds). Where no SendWrites is
open (the stock brokers, ``enqueue_many``), or the state store is another server, ``ride_along``
declines and the middleware writes as before.

``FairRabbitmqBroker`` opens one on its state-store client around the same hooks: the calls go in
the pipeline of its tenant-routing call, before the publish (the route decides where the message
is published). A publish that fails for good then runs each call's ``undo`` (JobStatus: drop the
PENDING status it wrote), so no status outlives a message that was never queued.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool

from ..redis_cluster import ClusterClient
from .scripts import ScriptCall

_open: contextvars.ContextVar[SendWrites | None] = contextvars.ContextVar("fairway_send_writes", default=None)


@dataclass
class SendWrites:
    """The script calls riding along with one send, and who to tell when one fails."""

    server: tuple[Any, ...]
    calls: list[ScriptCall] = field(default_factory=list)
    on_errors: list[Callable[[redis.RedisError], None]] = field(default_factory=list)
    carried: set[str] = field(default_factory=set)
    undos: list[Callable[[], ScriptCall]] = field(default_factory=list)

    sent: bool = False

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


@contextmanager
def collecting(client: redis.Redis | None) -> Iterator[SendWrites]:
    """Open a :class:`SendWrites` for a send through ``client`` in this context (None: no server, so
    every ``ride_along`` declines)."""
    writes = SendWrites(server_of(client) if client is not None else ())
    token = _open.set(writes)
    try:
        yield writes
    finally:
        _open.reset(token)


def ride_along(
    client: Callable[[], redis.Redis],
    message_id: str,
    call: Callable[[], ScriptCall],
    on_error: Callable[[redis.RedisError], None],
    undo: Callable[[], ScriptCall] | None = None,
) -> bool:
    """Add ``call()`` to the open send's pipeline if ``client()`` talks to the broker's server; whether
    it did (both are asked only while a send is open, so a middleware on another broker builds nothing).
    ``undo()`` is the call that takes the write back if the message is never queued after all."""
    writes = _open.get()
    if writes is None or not writes.server or server_of(client()) != writes.server:
        return False
    writes.calls.append(call())
    writes.on_errors.append(on_error)
    writes.carried.add(message_id)
    if undo is not None:
        writes.undos.append(undo)
    return True


def rode_along(message_id: str) -> bool:
    """Whether the write for ``message_id`` went with the open send's pipeline."""
    writes = _open.get()
    return writes is not None and message_id in writes.carried


def server_of(client: redis.Redis) -> tuple[Any, ...]:
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
