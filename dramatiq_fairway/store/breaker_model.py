"""The circuit breaker model shared by its two stores: states, outcomes, replies and the window tallies.

The rules (closed, open, half-open; the count and time windows) are told in :mod:`.breakers`,
whose Redis store runs them in ``breaker.lua``; :mod:`.breaker_memory` runs the same rules in one
process. Both speak the types of this module, so the middleware never knows which one answers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from ..errors import FairwayError
from ..settings import BreakerPolicy

# Named as before the split: operators and tests filter the transitions by this logger name.
logger = logging.getLogger("dramatiq_fairway.store.breakers")

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
            "opened_at": iso(self.opened_at),
            "retry_at": iso(self.retry_at),
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
class StoredBreaker:
    """A breaker as stored: the fields of its Redis hash (or of its in-memory copy), times in ms."""

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
        calls, failures, slow = letters_tally(self.trials) if self.state == "half_open" else window_tally(self.window)
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


Tally = tuple[int, int, int]  # calls, failures, slow calls


def letters_tally(letters: str) -> Tally:
    return len(letters), count_letters(letters, "fF"), count_letters(letters, "SF")


def count_letters(letters: str, which: str) -> int:
    return sum(letters.count(letter) for letter in which)


def parse_buckets(window: str) -> list[list[int]]:
    """A time window's ``[second, calls, failures, slow]`` buckets, oldest first; a count window
    left by an earlier policy starts it afresh."""
    if ":" not in window:
        return []
    return [[int(part) for part in bucket.split(":")] for bucket in window.split(",")]


def bucket_text(second: int, tally: Tally) -> str:
    return ":".join(str(part) for part in (second, *tally))


def window_tally(window: str) -> Tally:
    if ":" not in window:
        return letters_tally(window)
    buckets = parse_buckets(window)
    return sum(b[1] for b in buckets), sum(b[2] for b in buckets), sum(b[3] for b in buckets)


def log_transition(reply: BreakerReply) -> None:
    if reply.previous is None:
        return
    state = reply.state
    detail = " (forced)" if state.forced else ""
    if state.state == "open" and state.retry_at:
        detail = f" until {iso(state.retry_at)}"
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


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
