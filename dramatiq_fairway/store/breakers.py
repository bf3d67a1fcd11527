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

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

import redis
from pydantic import BaseModel, ConfigDict

from ..connections import state_store_client
from ..errors import FairwayError
from ..settings import BreakerPolicy, Settings
from .scripts import LuaScript

logger = logging.getLogger(__name__)

# An unforced breaker that nobody wrote to for this long is forgotten (it would be closed anyway).
IDLE_TTL = 7 * 24 * 3600.0
# The expiry of a trial permit whose outcome was counted: it keeps its slot until the round ends.
_REPORTED = float("inf")

StateName = Literal["closed", "open", "half_open"]


class Outcome(StrEnum):
    """What a finished job tells its breaker; the letters are what the window stores."""

    SUCCESS = "s"
    SLOW_SUCCESS = "S"
    FAILURE = "f"
    SLOW_FAILURE = "F"
    IGNORED = "i"
    RATE_LIMITED = "r"


class StoreUnavailable(FairwayError):
    """The state store cannot be reached; callers fall back to per-process state."""


class BreakerState(BaseModel):
    """A breaker as every worker sees it. ``failures``/``calls`` are of the current window (the
    half-open round while half-open; a time window as of its last update); times are epoch
    seconds, None when not set."""

    model_config = ConfigDict(frozen=True)

    key: str
    state: StateName = "closed"
    forced: bool = False
    failures: int = 0
    slow_calls: int = 0
    calls: int = 0
    openings: int = 0
    opened_at: float | None = None
    retry_at: float | None = None

    def summary(self) -> dict[str, Any]:
        """The ``fairway breakers list --json`` shape (docs/design.md), times in ISO 8601 UTC."""
        return {
            "key": self.key,
            "state": self.state,
            "failures": self.failures,
            "calls": self.calls,
            "opened_at": _iso(self.opened_at),
            "retry_at": _iso(self.retry_at),
        }


@dataclass(frozen=True)
class BreakerReply:
    """What a store call did: the breaker after it, whether the job may run (``admit``), the
    state it left, when it changed one, and the breaker's version after it (every write adds one,
    so of two replies about one breaker the higher version is the newer state; 0 when the breaker
    has no record)."""

    state: BreakerState
    allowed: bool = False
    previous: StateName | None = None
    version: int = 0


def require_key(key: str) -> None:
    """Refuse a blank breaker key: no job asks for one, so such a breaker would hold nothing."""
    if not key.strip():
        raise ValueError(f"key: a breaker key cannot be empty or blank ({key!r})")


class BreakerStore(Protocol):
    def admit(self, key: str, policy: BreakerPolicy, *, permit: str, now: float | None = None) -> BreakerReply:
        """May a job run now? In half-open this takes one of the trial slots, held under ``permit``."""

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
        """Apply :class:`Outcome` letters in order; with ``permit``, the last one is that trial's."""

    def force_open(self, key: str, *, now: float | None = None) -> BreakerReply:
        """Open the breaker for every worker until :meth:`close` or :meth:`reset`."""

    def close(self, key: str, *, now: float | None = None) -> BreakerReply:
        """Close the breaker and forget its window (a no-op for an unknown key)."""

    def reset(self, key: str) -> BreakerReply:
        """Forget the breaker entirely."""

    def get(self, key: str) -> BreakerState | None:
        """The breaker, or None if it does not exist."""

    def list(self) -> list[BreakerState]:
        """Every known breaker, sorted by key."""


@dataclass
class _Fields:
    """A breaker as stored: the fields of its Redis hash, times in ms."""

    state: StateName = "closed"
    forced: bool = False
    window: str = ""
    trials: str = ""
    openings: int = 0
    opened_at: int = 0
    retry_at: int = 0
    version: int = 0
    permits: dict[str, float] = field(default_factory=dict)

    def to_state(self, key: str) -> BreakerState:
        calls, failures, slow = _tally(self.trials) if self.state == "half_open" else _window_tally(self.window)
        return BreakerState(
            key=key,
            state=self.state,
            forced=self.forced,
            failures=failures,
            slow_calls=slow,
            calls=calls,
            openings=self.openings,
            opened_at=self.opened_at / 1000 if self.opened_at else None,
            retry_at=self.retry_at / 1000 if self.retry_at else None,
        )


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
        return self._run(key, "admit", now, permit, policy.half_open_max_calls, _ms(policy.trial_timeout))

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
            _ms(retry_after),
            repr(policy.failure_rate_threshold),
            repr(policy.slow_call_rate_threshold),
            policy.minimum_calls,
            policy.window_type,
            policy.window_size if policy.window_type == "count" else policy.window_duration,
            _ms(policy.open_duration),
            repr(policy.open_duration_factor),
            _ms(policy.max_open_duration),
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
        now_arg = "" if now is None else _ms(now)
        keys = [hash_key, f"{hash_key}:trials"]
        reply = self._guard(self._SCRIPT.run, self.client, keys, [command, now_arg, _ms(IDLE_TTL), *args])
        state, forced, window, trials, openings, opened_at, retry_at, previous, created, allowed, version = reply
        fields = _Fields(
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
        _log_transition(result)
        return result

    @staticmethod
    def _guard(call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except redis.RedisError as error:
            # Any store failure (down, read-only replica, out of memory) must not stop jobs: callers
            # fall back to per-process state.
            raise StoreUnavailable(f"breaker state store failed: {type(error).__name__}: {error}") from error


class MemoryBreakerStore:
    """Breakers in this process, with exactly the semantics of ``breaker.lua`` (keep them in step).

    Only the Redis keys' idle expiry has no counterpart: a process does not live for weeks of idleness.
    Versions order this store's replies as ``breaker.lua``'s order Redis's, but count only real changes
    (permits included), so the two stores' numbers differ; they are never compared with each other.
    """

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._breakers: dict[str, _Fields] = {}
        self._lock = threading.Lock()

    def admit(self, key: str, policy: BreakerPolicy, *, permit: str, now: float | None = None) -> BreakerReply:
        with self._lock:
            b, now_ms, before = self._load(key, now)
            allowed = False
            if b.forced:
                pass
            elif b.state == "closed":
                allowed = True
            else:
                if b.state == "open" and now_ms >= b.retry_at:
                    b.state, b.trials, b.permits = "half_open", "", {}
                if b.state == "half_open":
                    b.permits = {p: expiry for p, expiry in b.permits.items() if expiry > now_ms}
                    if permit in b.permits:
                        allowed = b.permits[permit] != _REPORTED
                    elif len(b.permits) < policy.half_open_max_calls:
                        b.permits[permit] = now_ms + _ms(policy.trial_timeout)
                        allowed = True
            return self._save(key, b, before, allowed)

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
        with self._lock:
            b, now_ms, before = self._load(key, now)
            trial = permit is not None and b.permits.get(permit, _REPORTED) != _REPORTED
            if trial and permit is not None:
                if outcomes.endswith(Outcome.IGNORED):
                    del b.permits[permit]
                else:
                    b.permits[permit] = _REPORTED
            for i, letter in enumerate(outcomes, start=1):
                if b.forced or letter == Outcome.IGNORED:
                    continue
                if letter == Outcome.RATE_LIMITED:
                    if b.state != "open":
                        _open_for(b, now_ms, _ms(retry_after))
                    else:
                        b.retry_at = max(b.retry_at, now_ms + _ms(retry_after))
                elif b.state == "closed":
                    if policy.window_type == "count":
                        b.window = (_letters(b.window) + letter)[-policy.window_size :]
                        tally, minimum = _tally(b.window), min(policy.minimum_calls, policy.window_size)
                    else:
                        b.window = _add_to_buckets(b.window, letter, now_ms, policy.window_duration)
                        tally, minimum = _window_tally(b.window), policy.minimum_calls
                    if tally[0] >= minimum and _rate_exceeded(tally, policy):
                        _open_grown(b, now_ms, policy)
                elif b.state == "half_open" and trial and i == len(outcomes):
                    b.trials += letter
                    if len(b.trials) >= policy.half_open_max_calls:
                        tally = _tally(b.trials)
                        if _rate_exceeded(tally, policy):
                            # The failed round is what an operator sees of the window while it is open.
                            b.window = b.trials if policy.window_type == "count" else _bucket(now_ms // 1000, tally)
                            _open_grown(b, now_ms, policy)
                        else:
                            _close(b)
            return self._save(key, b, before)

    def force_open(self, key: str, *, now: float | None = None) -> BreakerReply:
        require_key(key)
        with self._lock:
            b, now_ms, before = self._load(key, now)
            b.forced = True
            _open_for(b, now_ms, 0)
            b.retry_at = 0
            return self._save(key, b, before)

    def close(self, key: str, *, now: float | None = None) -> BreakerReply:
        with self._lock:
            if key not in self._breakers:
                return BreakerReply(BreakerState(key=key))
            b, _now_ms, before = self._load(key, now)
            _close(b)
            return self._save(key, b, before)

    def reset(self, key: str) -> BreakerReply:
        with self._lock:
            old = self._breakers.pop(key, None)
        previous = old.state if old is not None and old.state != "closed" else None
        result = BreakerReply(BreakerState(key=key), previous=previous)
        _log_transition(result)
        return result

    def get(self, key: str) -> BreakerState | None:
        with self._lock:
            b = self._breakers.get(key)
            return b.to_state(key) if b is not None else None

    def list(self) -> list[BreakerState]:
        with self._lock:
            return [self._breakers[key].to_state(key) for key in sorted(self._breakers)]

    def _load(self, key: str, now: float | None) -> tuple[_Fields, int, _Fields | None]:
        before = self._breakers.get(key)
        working = replace(before, permits=dict(before.permits)) if before is not None else _Fields()
        return working, _ms(self._clock() if now is None else now), before

    def _save(self, key: str, b: _Fields, before: _Fields | None, allowed: bool = False) -> BreakerReply:
        if b != (before or _Fields()):
            b.version += 1
            self._breakers[key] = b
        previous_state = before.state if before is not None else "closed"
        previous = previous_state if previous_state != b.state else None
        result = BreakerReply(b.to_state(key), allowed, previous, b.version)
        _log_transition(result)
        return result


def _open_for(b: _Fields, now_ms: int, duration_ms: int) -> None:
    b.state, b.opened_at, b.retry_at, b.trials, b.permits = "open", now_ms, now_ms + duration_ms, "", {}


def _open_grown(b: _Fields, now_ms: int, policy: BreakerPolicy) -> None:
    base, cap = _ms(policy.open_duration), _ms(policy.max_open_duration)
    duration = int(min(base * policy.open_duration_factor**b.openings, cap))
    b.openings += 1
    _open_for(b, now_ms, duration)


def _close(b: _Fields) -> None:
    b.state, b.forced, b.window, b.trials, b.openings, b.opened_at, b.retry_at, b.permits = (
        "closed",
        False,
        "",
        "",
        0,
        0,
        0,
        {},
    )


_Tally = tuple[int, int, int]  # calls, failures, slow calls


def _rate_exceeded(tally: _Tally, policy: BreakerPolicy) -> bool:
    calls, failures, slow = tally
    return failures / calls >= policy.failure_rate_threshold or slow / calls >= policy.slow_call_rate_threshold


def _tally(letters: str) -> _Tally:
    return len(letters), _count(letters, "fF"), _count(letters, "SF")


def _count(letters: str, which: str) -> int:
    return sum(letters.count(letter) for letter in which)


def _letters(window: str) -> str:
    """A count window's letters; a time window left by an earlier policy starts it afresh."""
    return "" if ":" in window else window


def _parse_buckets(window: str) -> list[list[int]]:
    """A time window's ``[second, calls, failures, slow]`` buckets, oldest first; a count window
    left by an earlier policy starts it afresh."""
    if ":" not in window:
        return []
    return [[int(part) for part in bucket.split(":")] for bucket in window.split(",")]


def _bucket(second: int, tally: _Tally) -> str:
    return ":".join(str(part) for part in (second, *tally))


def _window_tally(window: str) -> _Tally:
    if ":" not in window:
        return _tally(window)
    buckets = _parse_buckets(window)
    return sum(b[1] for b in buckets), sum(b[2] for b in buckets), sum(b[3] for b in buckets)


def _add_to_buckets(window: str, letter: str, now_ms: int, duration: int) -> str:
    """``window`` with the buckets older than ``duration`` seconds dropped and ``letter`` counted in
    the bucket of the current second."""
    second = now_ms // 1000
    buckets = [b for b in _parse_buckets(window) if b[0] > second - duration]
    if not buckets or buckets[-1][0] < second:
        buckets.append([second, 0, 0, 0])
    current = buckets[-1]
    current[1] += 1
    current[2] += letter in "fF"
    current[3] += letter in "SF"
    return ",".join(_bucket(b[0], (b[1], b[2], b[3])) for b in buckets)


def _decode_hash(raw: dict[bytes, bytes]) -> _Fields:
    text = {k.decode(): v.decode() for k, v in raw.items()}
    return _Fields(
        state=text.get("state", "closed"),  # type: ignore[arg-type]
        forced=text.get("forced") == "1",
        window=text.get("window", ""),
        trials=text.get("trials", ""),
        openings=int(text.get("openings", 0)),
        opened_at=int(text.get("opened_at", 0)),
        retry_at=int(text.get("retry_at", 0)),
        version=int(text.get("version", 0)),
    )


def _log_transition(reply: BreakerReply) -> None:
    if reply.previous is None:
        return
    state = reply.state
    detail = " (forced)" if state.forced else ""
    if state.state == "open" and state.retry_at:
        detail = f" until {_iso(state.retry_at)}"
    logger.log(
        logging.WARNING if state.state == "open" else logging.INFO,
        "Breaker %r: %s -> %s%s (%d/%d failed)",
        state.key,
        reply.previous,
        state.state,
        detail,
        state.failures,
        state.calls,
        extra={"breaker": state.key, "from_state": reply.previous, "to_state": state.state},
    )


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
