"""Circuit breaker state shared by every worker: the state machine, its Redis and in-memory backends.

A breaker guards one dependency (a key such as ``semantic_scholar`` or ``api:acme``). It is
*closed* while the failure rate over its sliding window stays below the threshold (or too few
calls were made: ``minimum_calls``). The window is the last ``window_size`` calls
(``window_type="count"``) or the calls of the last ``window_duration`` seconds in per-second
buckets (``window_type="time"``), as resilience4j's COUNT_BASED and TIME_BASED windows. It is
*open* (nothing runs) for ``open_duration`` after it trips, growing by ``open_duration_factor``
on each consecutive opening up to ``max_open_duration``, then *half-open*: across all workers,
``half_open_max_calls`` trial jobs run (as resilience4j's permitted calls in half-open: a trial's
slot is taken until the round ends, and only a trial whose outcome does not count or that never
reports within ``trial_timeout`` is replaced), and their outcomes close it or open it again.
``RateLimited(retry_after)`` opens it for exactly ``retry_after``. An operator can
force it open until it is closed or reset (``fairway breakers``).

Redis keys (prefix ``{namespace}:``; the breaker key in braces is the hash tag, so both keys of a
breaker live in one Redis Cluster slot):

``{ns}:breaker:{key}``
    hash: state, forced, window, trials, openings, opened_at, retry_at (see ``breaker.lua``;
    ``window`` holds outcome letters for a count window, ``second:calls:failures:slow`` buckets
    for a time window).
    TTL: :data:`IDLE_TTL` after the last write, plus the time it stays open; none while forced.
``{ns}:breaker:{key}:trials``
    zset of the permits of the current half-open round (id → expiry of a running trial, +inf once
    it reported). TTL: the policy's ``trial_timeout``.
``{ns}:breakers``
    set of the breaker keys, for ``list`` only (never on a job's path); written when a breaker
    hash is created, pruned by ``list`` of keys whose hash expired. No TTL.

Every transition runs in one Lua script call (``breaker.lua``), so N processes on M hosts see one
breaker. :class:`MemoryBreakerStore` keeps identical semantics in one process (tests, the
StubBroker, and the fallback while the state store is down); one parametrised test suite runs
both. Times are epoch seconds at this interface (``now=None``: the store's clock, Redis ``TIME``
for Redis so that every host shares one clock) and milliseconds inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from ..connections import state_store_client
from ..settings import BreakerPolicy, Settings
from .breaker_memory import MemoryBreakerStore
from .breaker_model import (
    BreakerReply,
    BreakerState,
    BreakerStore,
    Outcome,
    StateName,
    StoredBreaker,
    StoreUnavailable,
    log_transition,
    ms,
    require_key,
)
from .scripts import LuaScript

# The model and the in-memory store are re-exported: this module was their import path before the split.
__all__ = [
    "IDLE_TTL",
    "BreakerReply",
    "BreakerState",
    "BreakerStore",
    "MemoryBreakerStore",
    "Outcome",
    "RedisBreakerStore",
    "StateName",
    "StoreUnavailable",
    "require_key",
]

# An unforced breaker that nobody wrote to for this long is forgotten (it would be closed anyway).
IDLE_TTL = 7 * 24 * 3600.0


class RedisBreakerStore:
    """Breakers in the state store's Redis; every transition is one ``breaker.lua`` call."""

    _SCRIPT = LuaScript.load(Path(__file__).with_name("breaker.lua"))

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self._index = f"{namespace}:breakers"

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisBreakerStore:
        """The breakers of the state store that ``settings`` name."""
        return cls(state_store_client(settings), settings.namespace)

    def admit(self, key: str, policy: BreakerPolicy, *, permit: str, now: float | None = None) -> BreakerReply:
        return self._run(key, "admit", now, permit, policy.half_open_max_calls, ms(policy.trial_timeout))

    def record(
        self,
        key: str,
        outcomes: str,
        policy: BreakerPolicy,
        *,
        permit: str | None = None,
        retry_after: float = 0.0,
        now: float | None = None,
    ) -> BreakerReply:
        return self._run(
            key,
            "record",
            now,
            outcomes,
            permit or "",
            ms(retry_after),
            repr(policy.failure_rate_threshold),
            repr(policy.slow_call_rate_threshold),
            policy.minimum_calls,
            policy.window_type,
            policy.window_size if policy.window_type == "count" else policy.window_duration,
            ms(policy.open_duration),
            repr(policy.open_duration_factor),
            ms(policy.max_open_duration),
            policy.half_open_max_calls,
        )

    def force_open(self, key: str, *, now: float | None = None) -> BreakerReply:
        require_key(key)
        return self._run(key, "force_open", now)

    def close(self, key: str, *, now: float | None = None) -> BreakerReply:
        return self._run(key, "close", now)

    def reset(self, key: str) -> BreakerReply:
        reply = self._run(key, "reset", None)
        self._guard(self.client.srem, self._index, key)
        return reply

    def get(self, key: str) -> BreakerState | None:
        raw = self._guard(self.client.hgetall, self._hash(key))
        return _decode_hash(raw).to_state(key) if raw else None

    def list(self) -> list[BreakerState]:
        keys = sorted(k.decode() for k in self._guard(self.client.smembers, self._index))
        pipeline = self.client.pipeline(transaction=False)
        for key in keys:
            pipeline.hgetall(self._hash(key))
        hashes = self._guard(pipeline.execute)
        gone = [key for key, raw in zip(keys, hashes, strict=True) if not raw]
        if gone:
            self._guard(self.client.srem, self._index, *gone)
        return [_decode_hash(raw).to_state(key) for key, raw in zip(keys, hashes, strict=True) if raw]

    def _hash(self, key: str) -> str:
        return f"{self.namespace}:breaker:{{{key}}}"

    def _run(self, key: str, command: str, now: float | None, *args: Any) -> BreakerReply:
        hash_key = self._hash(key)
        now_arg = "" if now is None else ms(now)
        keys = [hash_key, f"{hash_key}:trials"]
        reply = self._guard(self._SCRIPT.run, self.client, keys, [command, now_arg, ms(IDLE_TTL), *args])
        state, forced, window, trials, openings, opened_at, retry_at, previous, created, allowed, version = reply
        fields = StoredBreaker(
            state=state.decode(),
            forced=forced == b"1",
            window=window.decode(),
            trials=trials.decode(),
            openings=int(openings),
            opened_at=int(opened_at),
            retry_at=int(retry_at),
        )
        if created:
            self._guard(self.client.sadd, self._index, key)
        result = BreakerReply(fields.to_state(key), bool(allowed), previous.decode() or None, int(version))
        log_transition(result)
        return result

    @staticmethod
    def _guard(call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except redis.RedisError as error:
            # Any store failure (down, read-only replica, out of memory) must not stop jobs: callers
            # fall back to per-process state.
            raise StoreUnavailable(f"breaker state store failed: {type(error).__name__}: {error}") from error


def _decode_hash(raw: dict[bytes, bytes]) -> StoredBreaker:
    text = {k.decode(): v.decode() for k, v in raw.items()}
    return StoredBreaker(
        state=text.get("state", "closed"),  # type: ignore[arg-type]
        forced=text.get("forced") == "1",
        window=text.get("window", ""),
        trials=text.get("trials", ""),
        openings=int(text.get("openings", 0)),
        opened_at=int(text.get("opened_at", 0)),
        retry_at=int(text.get("retry_at", 0)),
        version=int(text.get("version", 0)),
    )
