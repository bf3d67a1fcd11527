"""``run_scripts``: a pipeline's calls take effect in the order given, even when the server has
not loaded some of their scripts yet (a new process, a changed script, a restarted Redis)."""

from __future__ import annotations

import uuid

import pytest
import redis

from dramatiq_fairway.store.scripts import LuaScript, ScriptCall, run_scripts


def _push(tag: str) -> LuaScript:
    # A comment unique to this run: the server cannot have this script cached already.
    return LuaScript.from_text(f"-- {uuid.uuid4()}\nreturn redis.call('RPUSH', KEYS[1], '{tag}')")


def test_calls_run_in_order_when_the_first_script_is_not_loaded_yet(state_client: redis.Redis, namespace: str) -> None:
    first, second = _push("first"), _push("second")
    key = f"{namespace}:order"
    second.run(state_client, [f"{namespace}:warm"])  # only the second script is on the server

    run_scripts(state_client, [ScriptCall(first, [key], []), ScriptCall(second, [key], [])])

    assert state_client.lrange(key, 0, -1) == [b"first", b"second"]


def test_script_arguments_reach_the_server_as_redis_py_would_send_them(
    state_client: redis.Redis, namespace: str
) -> None:
    # The calls are packed by hiredis directly (store/scripts.py, ``_packed``): text, numbers and bytes
    # arrive as redis-py encodes them, and a bool is refused with redis-py's error.
    echo = LuaScript.from_text("return ARGV")
    args = ["plain", "é ü", b"\xff\x00raw", 7, -3, 10**20, 1.5, 0.1, 1e20]

    [reply] = run_scripts(state_client, [ScriptCall(echo, [f"{namespace}:k"], args)])

    encoder = state_client.get_encoder()
    assert reply == [encoder.encode(arg) for arg in args]
    with pytest.raises(redis.DataError):
        run_scripts(state_client, [ScriptCall(echo, [f"{namespace}:k"], [True])])


def test_a_script_the_server_keeps_losing_is_an_error_not_an_endless_rerun(
    state_client: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when the load reached another server than the call (a Sentinel failover): the rerun
    # finds the script lost again. Before, each rerun loaded and reran once more, until Python's
    # recursion limit stopped the worker thread (CI, tests/chaos/test_sentinel.py, 2026-12-07).
    monkeypatch.setattr(type(state_client), "script_load", lambda _self, _text: None)
    with pytest.raises(redis.exceptions.NoScriptError):
        run_scripts(state_client, [ScriptCall(_push("lost"), [f"{namespace}:lost"], [])])
