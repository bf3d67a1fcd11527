"""Lua scripts called by SHA, several in one pipeline: how the hot paths talk to Redis.

redis-py's own ``Script`` objects cost one more round trip per pipeline (``SCRIPT EXISTS`` before
every ``execute``); here a pipeline of script calls is one round trip. A script is loaded once per
client before its first pipeline, so the calls of a pipeline run in their order (a call whose
script the server lacked would otherwise run after the calls that followed it: a job's progress
written before its status exists). A script the server lost later (a restart, ``SCRIPT FLUSH``,
a promoted replica) is loaded and its calls rerun, after the rest of that one pipeline. Every script of the package
runs through here, batched or alone (``LuaScript.run``, or ``LuaScript.call`` on a send path).

A caller that must not lose a write to a failover asks for ``replicas``: the pipeline ends with
``WAIT replicas timeout`` on the same connection (docs/operations.md, "Redis Sentinel"). On a
Redis Cluster the calls go to each node in a pipeline of their own that ends with ``WAIT``
(``WAIT`` only counts the writes of its own connection), and a node lost to a failover is found
again in the slot map (docs/design.md, "Redis Cluster").

Every call touches one hash slot: its keys share a ``{hash tag}``, and a key a script builds from
a prefix it is given carries the prefix's tag.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import redis
from redis.exceptions import AskError, ClusterDownError, NoScriptError, TryAgainError

from ..outage import OutageWarning
from ..redis_cluster import is_cluster
from .held_connections import checkin, checkout

logger = logging.getLogger(__name__)

# How long WAIT may hold a write's caller when replicas lag or are gone: the write is done by
# then, so this bounds the slowdown, not the data.
WAIT_TIMEOUT_MS = 1000
# How long a cluster's script calls with WAIT keep being retried while a replica takes over a
# lost master's slots (measured: writable again 4-5 s after the kill, cluster-node-timeout 2000).
CLUSTER_FAILOVER_SECONDS = 20.0
# Replies that say a call did not run on this node: the slot moved, or the cluster is failing over.
_NOT_HERE = (AskError, ClusterDownError, TryAgainError)
_under_replicated = OutageWarning(logger)
# The scripts each server is known to hold, per connection pool (per client on a cluster).
_loaded: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class LuaScript:
    text: str
    sha: str

    @classmethod
    def load(cls, path: Path) -> LuaScript:
        return cls.from_text(path.read_text())

    @classmethod
    def from_text(cls, text: str) -> LuaScript:
        return cls(text, hashlib.sha1(text.encode()).hexdigest())

    def run(self, client: redis.Redis, keys: list[str], args: list[Any] | None = None) -> Any:
        """The reply of one call of this script (for calls that are not batched with others)."""
        [reply] = run_scripts(client, [ScriptCall(self, keys, args or [])])
        return reply

    def call(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        """``run`` without a pipeline, for a call on every send: redis-py's pipeline object cost about
        as much as the round trip itself there (``FairRabbitmqBroker``'s routing, bench/fairness.py)."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.text)
            return client.evalsha(self.sha, len(keys), *keys, *args)


@dataclass(frozen=True)
class ScriptCall:
    script: LuaScript
    keys: list[str]
    args: list[Any]


def run_scripts(
    client: redis.Redis,
    calls: list[ScriptCall],
    *,
    replicas: int = 0,
    best_effort: Sequence[ScriptCall] = (),
    once: bool = False,
) -> list[Any]:
    """The replies of ``calls``, sent in one pipeline; the first error reply is raised.

    ``best_effort`` calls go after ``calls`` in the same pipeline; their replies follow, an error
    reply returned rather than raised. With ``replicas`` > 0 the pipeline waits for that many
    replicas to have the writes; fewer within ``WAIT_TIMEOUT_MS`` is logged (once a minute), not
    raised: the writes are done. With ``once`` a connection lost after sending is raised, never
    retried here: the calls may have run with their replies lost, which a caller that takes
    messages must know (a retry that succeeded would hide it: ``FairRedisBroker``'s fetch).
    """
    replies = _run(client, [*calls, *best_effort], replicas, once=once)
    for reply in replies[: len(calls)]:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _run(
    client: redis.Redis, calls: list[ScriptCall], replicas: int, *, once: bool = False, rerun: bool = True
) -> list[Any]:
    """The replies of ``calls`` in one pipeline, error replies included; lost scripts loaded and
    rerun (with ``rerun``: once, a script lost again is the call's error reply).

    On one server the commands are packed in one go (``_packed``) and sent on a
    connection of the pool, retried by its ``Retry`` as redis-py's non-transactional pipeline is:
    the pipeline object's bookkeeping per command cost more than the round trip for a batch."""
    if not calls:
        return []
    if (replicas or once) and is_cluster(client):
        return _run_per_node(client, calls, replicas, once=once)
    _load_once(client, calls)
    commands = _evalsha_commands(calls)
    if replicas:
        commands.append(("WAIT", replicas, WAIT_TIMEOUT_MS))
    replies = _cluster_pipeline(client, commands) if is_cluster(client) else _one_write(client, commands, once)
    if replicas:
        _check_replicas(replies.pop(), replicas)
    return _rerun_lost(client, calls, replies, replicas, once=once) if rerun else replies


def _rerun_lost(
    client: redis.Redis, calls: list[ScriptCall], replies: list[Any], replicas: int, *, once: bool = False
) -> list[Any]:
    """``replies`` with those of the calls whose script the server lost loaded and run again, once:
    where the load reached another server than the calls (a Sentinel failover under way), loading
    and rerunning until they meet would never end."""
    lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if lost:
        for script in {calls[i].script for i in lost}:
            client.script_load(script.text)
        rerun = _run(client, [calls[i] for i in lost], replicas, once=once, rerun=False)
        for i, reply in zip(lost, rerun, strict=True):
            replies[i] = reply
    return replies


def _evalsha_commands(calls: list[ScriptCall]) -> list[tuple[Any, ...]]:
    return [("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args) for call in calls]


def _load_once(client: redis.Redis, calls: list[ScriptCall]) -> None:
    owner = getattr(client, "connection_pool", client)
    known = _loaded.setdefault(owner, set())
    for script in {call.script for call in calls if call.script.sha not in known}:
        client.script_load(script.text)
        known.add(script.sha)


def _one_write(client: redis.Redis, commands: list[tuple[Any, ...]], once: bool) -> list[Any]:
    connection = checkout(client.connection_pool)
    try:
        if once:
            return _exchange(connection, commands)
        replies: list[Any] = connection.retry.call_with_retry(
            lambda: _exchange(connection, commands), lambda _error: connection.disconnect()
        )
    finally:
        checkin(client.connection_pool, connection)
    return replies


def _cluster_pipeline(client: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """redis-py's cluster pipeline, which sends each node its commands."""
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    replies: list[Any] = pipe.execute(raise_on_error=False)
    return replies


def _run_per_node(client: Any, calls: list[ScriptCall], replicas: int, *, once: bool = False) -> list[Any]:
    """``_run`` on a cluster with ``WAIT`` or ``once``: each node's calls in one pipeline on that
    node's client (redis-py's cluster pipeline sends a pipeline again after a lost connection).

    A node that cannot be reached, or replies that a slot is not its own, has those calls sent
    again after the slot map is read again (a call that failed on a lost connection may have run:
    at least once, as redis-py's own retry of a pipeline); with ``once``, a lost connection is
    raised instead (calls answered MOVED, ASK, TRYAGAIN or CLUSTERDOWN did not run: sent again)."""
    replies: list[Any] = [None] * len(calls)
    pending = list(range(len(calls)))
    deadline = time.monotonic() + CLUSTER_FAILOVER_SECONDS
    pause = 0.05
    while True:
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i in pending:
            node = client.get_node_from_key(calls[i].keys[0])
            by_node.setdefault(node.name, (node, []))[1].append(i)
        again: list[int] = []
        for node, indexes in by_node.values():
            try:
                node_replies = _run(node.redis_connection, [calls[i] for i in indexes], replicas, once=once)
            except (redis.ConnectionError, redis.TimeoutError):
                if once or time.monotonic() > deadline:
                    raise
                again += indexes
                continue
            for i, reply in zip(indexes, node_replies, strict=True):
                replies[i] = reply
                if isinstance(reply, _NOT_HERE):
                    again.append(i)
        if not again or time.monotonic() > deadline:
            return replies
        pending = again
        time.sleep(pause)
        pause = min(pause * 2, 0.5)
        with contextlib.suppress(redis.RedisError):  # no node answers yet: the next round tries again
            client.nodes_manager.initialize()


def _packed(connection: Any, commands: list[tuple[Any, ...]]) -> list[bytes]:
    """``commands`` in the Redis protocol, as ``connection.pack_commands`` packs them.

    redis-py encodes each argument in Python before hiredis packs it, which cost ~30 µs for the two
    calls of a RabbitMQ send (its count and PENDING status): hiredis packs str, bytes, int and float
    alike (UTF-8) by itself. Where it refuses an argument (a bool, a bytearray) or the client encodes
    otherwise, redis-py packs, raising its own error."""
    if connection.encoder.encoding == "utf-8" and connection.encoder.encoding_errors == "strict":
        try:
            return [b"".join([hiredis.pack_command(command) for command in commands])]
        except TypeError:
            pass
    packed: list[bytes] = connection.pack_commands(commands)
    return packed


def _exchange(connection: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one write and read their replies (an error reply is returned, not raised)."""
    _send(connection, commands)
    return _read_replies(connection, len(commands))


def _send(connection: Any, commands: list[tuple[Any, ...]]) -> None:
    try:
        connection.send_packed_command(_packed(connection, commands))
    except BaseException:
        connection.disconnect()  # part of the write may have gone out
        raise


def _read_replies(connection: Any, count: int) -> list[Any]:
    """The next ``count`` replies on ``connection``, an error reply returned rather than raised."""
    replies: list[Any] = []
    try:
        for _ in range(count):
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as error:
                replies.append(error)
    except BaseException:
        connection.disconnect()  # replies may be left unread on it
        raise
    return replies


class ScriptsInFlight:
    """Script calls written to the server now, their replies read later (``replies``), so that the
    caller overlaps the round trip with other work (``FairRabbitmqBroker`` publishes meanwhile).
    One connection of the client's pool is held in between; ``replies`` must be called once. On a
    Redis Cluster, whose calls may go to several nodes, the calls run at once instead."""

    def __init__(self, client: redis.Redis, calls: list[ScriptCall]) -> None:
        self._client = client
        self._calls = calls
        self._done: list[Any] | None = None
        if is_cluster(client):
            self._done = _run(client, calls, 0)
            return
        _load_once(client, calls)
        self._connection = checkout(client.connection_pool)
        try:
            _send(self._connection, _evalsha_commands(calls))
        except BaseException:
            checkin(client.connection_pool, self._connection)
            raise

    def replies(self) -> list[Any]:
        """The replies of the calls, error replies included (lost scripts loaded and their calls rerun)."""
        if self._done is not None:
            return self._done
        try:
            replies = _read_replies(self._connection, len(self._calls))
        finally:
            checkin(self._client.connection_pool, self._connection)
        return _rerun_lost(self._client, self._calls, replies, 0)


def _check_replicas(acknowledged: Any, wanted: int) -> None:
    if isinstance(acknowledged, Exception):
        raise acknowledged
    if int(acknowledged) < wanted:
        _under_replicated.warn(
            "Only %d of %d replica(s) acknowledged a write within %d ms (FAIRWAY_REDIS_WAIT_REPLICAS): "
            "a failover now could lose it.",
            int(acknowledged),
            wanted,
            WAIT_TIMEOUT_MS,
        )
