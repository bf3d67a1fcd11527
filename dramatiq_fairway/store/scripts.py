"""Lua scripts called by SHA, several in one pipeline: how the hot paths talk to Redis.

redis-py's own ``Script`` objects cost one more round trip per pipeline (``SCRIPT EXISTS`` before
every ``execute``); here a pipeline of script calls is one round trip, and a script the server
lost (a restart, ``SCRIPT FLUSH``) is loaded and its calls rerun. Every script of the package
runs through here, batched or alone (``LuaScript.run``, or ``LuaScript.call`` on a send path).

A caller that must not lose a write to a failover asks for ``replicas``: the pipeline ends with
``WAIT replicas timeout`` on the same connection (docs/operations.md, "Redis Sentinel").
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import NoScriptError

from ..outage import OutageWarning

logger = logging.getLogger(__name__)

# How long WAIT may hold a write's caller when replicas lag or are gone: the write is done by
# then, so this bounds the slowdown, not the data.
WAIT_TIMEOUT_MS = 1000
_under_replicated = OutageWarning(logger)


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
    client: redis.Redis, calls: list[ScriptCall], *, replicas: int = 0, best_effort: Sequence[ScriptCall] = ()
) -> list[Any]:
    """The replies of ``calls``, sent in one pipeline; the first error reply is raised.

    ``best_effort`` calls go after ``calls`` in the same pipeline; their replies follow, an error
    reply returned rather than raised. With ``replicas`` > 0 the pipeline waits for that many
    replicas to have the writes; fewer within ``WAIT_TIMEOUT_MS`` is logged (once a minute), not
    raised: the writes are done.
    """
    replies = _run(client, [*calls, *best_effort], replicas)
    for reply in replies[: len(calls)]:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _run(client: redis.Redis, calls: list[ScriptCall], replicas: int) -> list[Any]:
    """The replies of ``calls`` in one pipeline, error replies included; lost scripts loaded and rerun.

    The pipeline is packed here (``_pack``) and sent on a connection of the pool as redis-py's
    non-transactional pipeline does, retried by the connection's ``Retry`` the same way: redis-py
    encodes each argument on its own, which cost more than the round trip for a batch."""
    if not calls:
        return []
    expected = len(calls) + (1 if replicas else 0)
    packed = _pack(calls, replicas)
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        replies: list[Any] = connection.retry.call_with_retry(
            lambda: _exchange(connection, packed, expected), lambda _error: connection.disconnect()
        )
    finally:
        pool.release(connection)
    if replicas:
        _check_replicas(replies.pop(), replicas)
    lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if lost:
        for script in {calls[i].script for i in lost}:
            client.script_load(script.text)
        for i, reply in zip(lost, _run(client, [calls[i] for i in lost], replicas), strict=True):
            replies[i] = reply
    return replies


def _exchange(connection: Any, packed: bytes, expected: int) -> list[Any]:
    """Send ``packed`` and read its ``expected`` replies (an error reply is returned, not raised)."""
    try:
        connection.send_packed_command([packed])
        replies: list[Any] = []
        for _ in range(expected):
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as error:
                replies.append(error)
    except BaseException:
        connection.disconnect()  # replies may be left unread on it
        raise
    return replies


def _pack(calls: Sequence[ScriptCall], replicas: int = 0) -> bytes:
    """``calls`` as RESP ``EVALSHA`` commands (then ``WAIT`` when ``replicas``), ready to send."""
    out: list[bytes] = []
    for call in calls:
        items = [call.script.sha, len(call.keys), *call.keys, *call.args]
        out.append(b"*%d\r\n$7\r\nEVALSHA\r\n" % (len(items) + 1))
        for item in items:
            data = item if isinstance(item, bytes) else str(item).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    if replicas:
        out.append(
            b"*3\r\n$4\r\nWAIT\r\n$%d\r\n%d\r\n$%d\r\n%d\r\n"
            % (len(str(replicas)), replicas, len(str(WAIT_TIMEOUT_MS)), WAIT_TIMEOUT_MS)
        )
    return b"".join(out)


class ScriptsInFlight:
    """Script calls written to the server now, their replies read later (``replies``), so that the
    caller overlaps the round trip with other work (``FairRabbitmqBroker`` publishes meanwhile).
    One connection of the client's pool is held in between; ``replies`` must be called once."""

    def __init__(self, client: redis.Redis, calls: list[ScriptCall]) -> None:
        self._client = client
        self._calls = calls
        self._connection = client.connection_pool.get_connection()
        try:
            self._connection.send_packed_command([_pack(calls)])
        except BaseException:
            self._connection.disconnect()
            client.connection_pool.release(self._connection)
            raise

    def replies(self) -> list[Any]:
        """The replies of the calls, error replies included (lost scripts loaded and their calls rerun)."""
        replies: list[Any] = []
        try:
            for _ in self._calls:
                try:
                    replies.append(self._connection.read_response())
                except redis.ResponseError as error:
                    replies.append(error)
        except BaseException:
            self._connection.disconnect()  # replies may be left unread on it
            raise
        finally:
            self._client.connection_pool.release(self._connection)
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            for script in {self._calls[i].script for i in lost}:
                self._client.script_load(script.text)
            for i, reply in zip(lost, _run(self._client, [self._calls[i] for i in lost], 0), strict=True):
                replies[i] = reply
        return replies


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
