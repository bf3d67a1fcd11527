"""A check, on one Redis, of what Redis Cluster refuses: a script call whose keys are in several slots.

Every EVAL / EVALSHA any client of the process sends goes through redis-py's ``_eval`` /
``_evalsha`` (``LuaScript.call``, redis-py's ``Script`` objects, cluster pipelines) or is packed
for one write by ``store/scripts.py``'s ``_packed`` (hiredis directly) or a connection's
``pack_commands`` (what hiredis refuses); wrapped, they compute
each call's key slots client-side (``CLUSTER KEYSLOT``'s CRC16 of the hash tag) and refuse
a call across slots as a cluster would. A refusal raised in a worker thread could be swallowed
(a failed job, a retry): every refusal is also recorded, and the test fails on it afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis.commands.core import ScriptCommands
from redis.connection import AbstractConnection
from redis.exceptions import RedisClusterException

from dramatiq_fairway.redis_cluster import slot_of
from dramatiq_fairway.store import scripts

# Calls that may cross slots, with the reason. ``adopt`` moves stock Dramatiq messages into a
# fairway queue; stock Dramatiq runs on one Redis only, and ``fairway migrate`` refuses a cluster.
CROSS_SLOT_ALLOWED = {b"adopt": "fairway migrate: stock Dramatiq keys, one Redis only"}


class CrossSlotCalls(list[str]):
    """The script calls of a test that touched several slots, as one line each."""


@contextmanager
def one_slot_per_script_call(monkeypatch: pytest.MonkeyPatch) -> Iterator[CrossSlotCalls]:
    refused = CrossSlotCalls()
    for name in ("_eval", "_evalsha"):
        monkeypatch.setattr(ScriptCommands, name, _checked(getattr(ScriptCommands, name), refused))
    monkeypatch.setattr(AbstractConnection, "pack_commands", _checked_batch(AbstractConnection.pack_commands, refused))
    monkeypatch.setattr(scripts, "_packed", _checked_batch(scripts._packed, refused))
    yield refused


def _checked(original: Any, refused: CrossSlotCalls) -> Any:
    def checked(self: Any, command: str, script: str, numkeys: int, *keys_and_args: Any) -> Any:
        _check(refused, command, numkeys, keys_and_args)
        return original(self, command, script, numkeys, *keys_and_args)

    return checked


def _checked_batch(original: Any, refused: CrossSlotCalls) -> Any:
    def checked(self: Any, commands: Any) -> Any:
        for command, *rest in commands:
            if str(command).upper() in {"EVAL", "EVALSHA"}:
                _check(refused, str(command), rest[1], rest[2:])
        return original(self, commands)

    return checked


def _check(refused: CrossSlotCalls, command: str, numkeys: Any, keys_and_args: Any) -> None:
    keys = keys_and_args[: int(numkeys)]
    slots = {slot_of(key if isinstance(key, str | bytes) else str(key)) for key in keys}
    first_arg = keys_and_args[int(numkeys)] if len(keys_and_args) > int(numkeys) else b""
    allowed = (first_arg.encode() if isinstance(first_arg, str) else first_arg) in CROSS_SLOT_ALLOWED
    if len(slots) > 1 and not allowed:
        line = f"{command} with keys in {len(slots)} slots: {[_text(key) for key in keys[:5]]}"
        refused.append(line)
        raise RedisClusterException(f"CROSSSLOT (tests/support/one_slot.py): {line}")


def _text(key: Any) -> str:
    return key.decode() if isinstance(key, bytes) else str(key)
