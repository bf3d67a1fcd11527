"""``MemoryBreakerStore``: breakers in one process, with exactly the semantics of ``breaker.lua``.

For tests, the StubBroker, and the fallback while the state store is down (:mod:`.breakers`
tells the rules). The transitions below mirror the script's; keep them in step.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

from ..settings import BreakerPolicy
from .breaker_model import (
    BreakerReply,
    BreakerState,
    Outcome,
    StoredBreaker,
    Tally,
    bucket_text,
    letters_tally,
    log_transition,
    ms,
    parse_buckets,
    require_key,
    window_tally,
)

# The expiry of a trial permit whose outcome was counted: it keeps its slot until the round ends.
_REPORTED = float("inf")


class MemoryBreakerStore:
    """Breakers in this process, with exactly the semantics of ``breaker.lua`` (keep them in step).

    Only the Redis keys' idle expiry has no counterpart: a process does not live for weeks of idleness.
    Versions order this store's replies as ``breaker.lua``'s order Redis's, but count only real changes
    (permits included), so the two stores' numbers differ; they are never compared with each other.
    """

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._breakers: dict[str, StoredBreaker] = {}
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
                        b.permits[permit] = now_ms + ms(policy.trial_timeout)
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
                        open_for(b, now_ms, ms(retry_after))
                    else:
                        b.retry_at = max(b.retry_at, now_ms + ms(retry_after))
                elif b.state == "closed":
                    if policy.window_type == "count":
                        b.window = (count_window_letters(b.window) + letter)[-policy.window_size :]
                        tally, minimum = letters_tally(b.window), min(policy.minimum_calls, policy.window_size)
                    else:
                        b.window = add_to_buckets(b.window, letter, now_ms, policy.window_duration)
                        tally, minimum = window_tally(b.window), policy.minimum_calls
                    if tally[0] >= minimum and rate_exceeded(tally, policy):
                        open_grown(b, now_ms, policy)
                elif b.state == "half_open" and trial and i == len(outcomes):
                    b.trials += letter
                    if len(b.trials) >= policy.half_open_max_calls:
                        tally = letters_tally(b.trials)
                        if rate_exceeded(tally, policy):
                            # The failed round is what an operator sees of the window while it is open.
                            b.window = b.trials if policy.window_type == "count" else bucket_text(now_ms // 1000, tally)
                            open_grown(b, now_ms, policy)
                        else:
                            close_breaker(b)
            return self._save(key, b, before)

    def force_open(self, key: str, *, now: float | None = None) -> BreakerReply:
        require_key(key)
        with self._lock:
            b, now_ms, before = self._load(key, now)
            b.forced = True
            open_for(b, now_ms, 0)
            b.retry_at = 0
            return self._save(key, b, before)

    def close(self, key: str, *, now: float | None = None) -> BreakerReply:
        with self._lock:
            if key not in self._breakers:
                return BreakerReply(BreakerState(key=key))
            b, _now_ms, before = self._load(key, now)
            close_breaker(b)
            return self._save(key, b, before)

    def reset(self, key: str) -> BreakerReply:
        with self._lock:
            old = self._breakers.pop(key, None)
        previous = old.state if old is not None and old.state != "closed" else None
        result = BreakerReply(BreakerState(key=key), previous=previous)
        log_transition(result)
        return result

    def get(self, key: str) -> BreakerState | None:
        with self._lock:
            b = self._breakers.get(key)
            return b.to_state(key) if b is not None else None

    def list(self) -> list[BreakerState]:
        with self._lock:
            return [self._breakers[key].to_state(key) for key in sorted(self._breakers)]

    def _load(self, key: str, now: float | None) -> tuple[StoredBreaker, int, StoredBreaker | None]:
        before = self._breakers.get(key)
        working = replace(before, permits=dict(before.permits)) if before is not None else StoredBreaker()
        return working, ms(self._clock() if now is None else now), before

    def _save(self, key: str, b: StoredBreaker, before: StoredBreaker | None, allowed: bool = False) -> BreakerReply:
        if b != (before or StoredBreaker()):
            b.version += 1
            self._breakers[key] = b
        previous_state = before.state if before is not None else "closed"
        previous = previous_state if previous_state != b.state else None
        result = BreakerReply(b.to_state(key), allowed, previous, b.version)
        log_transition(result)
        return result


def open_for(b: StoredBreaker, now_ms: int, duration_ms: int) -> None:
    b.state, b.opened_at, b.retry_at, b.trials, b.permits = "open", now_ms, now_ms + duration_ms, "", {}


def open_grown(b: StoredBreaker, now_ms: int, policy: BreakerPolicy) -> None:
    base, cap = ms(policy.open_duration), ms(policy.max_open_duration)
    duration = int(min(base * policy.open_duration_factor**b.openings, cap))
    b.openings += 1
    open_for(b, now_ms, duration)


def close_breaker(b: StoredBreaker) -> None:
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


def rate_exceeded(tally: Tally, policy: BreakerPolicy) -> bool:
    calls, failures, slow = tally
    return failures / calls >= policy.failure_rate_threshold or slow / calls >= policy.slow_call_rate_threshold


def count_window_letters(window: str) -> str:
    """A count window's letters; a time window left by an earlier policy starts it afresh."""
    return "" if ":" in window else window


def add_to_buckets(window: str, letter: str, now_ms: int, duration: int) -> str:
    """``window`` with the buckets older than ``duration`` seconds dropped and ``letter`` counted in
    the bucket of the current second."""
    second = now_ms // 1000
    buckets = [b for b in parse_buckets(window) if b[0] > second - duration]
    if not buckets or buckets[-1][0] < second:
        buckets.append([second, 0, 0, 0])
    current = buckets[-1]
    current[1] += 1
    current[2] += letter in "fF"
    current[3] += letter in "SF"
    return ",".join(bucket_text(b[0], (b[1], b[2], b[3])) for b in buckets)
