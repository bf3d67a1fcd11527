"""The job status model: the states a job goes through, what the store returns about a job,
and the times its history records (docs/design.md, "Job status").

Shared by the store (:mod:`.status`) and the batching writer (:mod:`.status_writer`).
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class JobState(StrEnum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    FAILURE = "FAILURE"
    DEAD_LETTER = "DEAD_LETTER"
    REVOKED = "REVOKED"
    REJECTED = "REJECTED"

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.STARTED, JobState.RETRY)


class StateChange(BaseModel):
    state: JobState
    at: dt.datetime


class JobRecord(BaseModel):
    """What the state store knows about one job."""

    id: str
    actor: str
    queue: str
    state: JobState
    progress: float | None = None
    note: str | None = None
    cancel_requested: bool = False
    history: list[StateChange] = []

    def as_json(self) -> dict[str, Any]:
        """The ``fairway jobs show --json`` shape (docs/design.md)."""
        return {
            "id": self.id,
            "actor": self.actor,
            "state": self.state.value,
            "progress": self.progress,
            "history": [{"state": c.state.value, "at": iso_from_datetime(c.at)} for c in self.history],
        }


class JobStart(BaseModel):
    """The outcome of :meth:`~.status.JobStatusStore.start`."""

    state: JobState | None
    duplicate: bool


@dataclass
class Move:
    """One job's move through ``states`` (pairs of state and ISO time) in status_transition.lua."""

    mode: str
    message_id: str
    states: list[tuple[JobState, str]]
    actor: str
    queue: str
    enqueued_at: str = ""


def iso_from_millis(millis: int) -> str:
    """A message timestamp (ms since the epoch) as the history records times."""
    return f"{_second_prefix(millis // 1000)}.{millis % 1000:03d}Z"


def iso_from_seconds(at: float) -> str:
    """A Unix time as the history records times (``2026-12-05T08:16:11.752Z``)."""
    return iso_from_millis(int(at * 1000))


@functools.lru_cache(maxsize=8)
def _second_prefix(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso_from_datetime(at: dt.datetime) -> str:
    """A datetime as the history records times."""
    return at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
