"""Job status and idempotency keys in the state store.

Keys (``{namespace}`` is ``FAIRWAY_NAMESPACE``):

``{namespace}:job:{message_id}``
    Hash: ``state``, ``actor``, ``queue``, ``history`` (JSON list of ``{"state", "at"}``, oldest
    first, at most ``history_limit`` entries), ``progress`` and ``note`` (set by
    ``dramatiq_fairway.progress``), ``cancel`` (``"1"`` once an operator cancelled the job).
    TTL: ``FAIRWAY_STATUS__TTL`` (1 h) after SUCCESS, ``FAIRWAY_STATUS__FAILED_TTL`` (7 days) after
    any other state, so a job that waits, fails or is cancelled stays visible for a week while the
    many successful ones cost one hour of memory. Every change resets the TTL.
``{namespace}:unique:{key}``
    String holding the id of the message that claimed the idempotency key; TTL ``unique_ttl``.

Every multi-step update is one Lua script (beside this module). A job's hash and a unique key are
separate script calls (they never share a hash tag) sent in one pipeline: one round trip.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..connections import state_store_client
from ..settings import Settings

_SCRIPTS = Path(__file__).parent


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
        """The ``fairway jobs show --json`` shape (DESIGN.md §7)."""
        return {
            "id": self.id,
            "actor": self.actor,
            "state": self.state.value,
            "progress": self.progress,
            "history": [{"state": c.state.value, "at": _iso(c.at)} for c in self.history],
        }


class JobStart(BaseModel):
    """The outcome of :meth:`JobStatusStore.start`."""

    state: JobState | None
    duplicate: bool


class JobStatusStore:
    """States, progress, cancel flags and idempotency keys of jobs, in the state store."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        ttl: int = 3600,
        failed_ttl: int = 604800,
        history_limit: int = 50,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.ttl = ttl
        self.failed_ttl = failed_ttl
        self.history_limit = history_limit
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._transition = client.register_script((_SCRIPTS / "status_transition.lua").read_text())
        self._progress = client.register_script((_SCRIPTS / "status_progress.lua").read_text())
        self._cancel = client.register_script((_SCRIPTS / "status_cancel.lua").read_text())
        self._claim = client.register_script((_SCRIPTS / "unique_claim.lua").read_text())

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> JobStatusStore:
        if client is None:
            # One quick retry: on the hot path a state-store outage must cost milliseconds per job,
            # not redis-py's default seconds of backoff (status is then dropped and counted).
            client = state_store_client(settings, retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1))
        return cls(
            client,
            settings.namespace,
            ttl=settings.status.ttl,
            failed_ttl=settings.status.failed_ttl,
        )

    def job_key(self, message_id: str) -> str:
        return f"{self.namespace}:job:{message_id}"

    def unique_key(self, key: str) -> str:
        return f"{self.namespace}:unique:{key}"

    def enqueued(self, message_id: str, actor: str, queue: str) -> None:
        """PENDING, unless the job is already known (a retry or a move out of the delay queue)."""
        self._record("enqueue", message_id, JobState.PENDING, actor, queue)

    def start(
        self,
        message_id: str,
        actor: str,
        queue: str,
        *,
        track: bool = True,
        unique_key: str | None = None,
        unique_ttl: int = 3_600_000,
    ) -> JobStart:
        """Claim the unique key (if any) and mark the job STARTED, in one round trip.

        The job comes back REVOKED when it was cancelled while queued. A duplicate is marked
        REJECTED (a second call: duplicates are the rare path).
        """
        pipe = self.client.pipeline(transaction=False)
        if unique_key is not None:
            self._claim(keys=[self.unique_key(unique_key)], args=[message_id, unique_ttl], client=pipe)
        if track:
            self._transition(
                keys=[self.job_key(message_id)], args=self._args("start", JobState.STARTED, actor, queue), client=pipe
            )
        replies = pipe.execute()
        duplicate = unique_key is not None and int(replies.pop(0)) == 0
        state = JobState(_text(replies[0])) if track else None
        if duplicate and track:
            state = self.finish(message_id, JobState.REJECTED, actor, queue)
        return JobStart(state=state, duplicate=duplicate)

    def finish(self, message_id: str, state: JobState, actor: str, queue: str) -> JobState:
        """Record ``state`` (SUCCESS, RETRY, FAILURE, DEAD_LETTER, REVOKED, REJECTED)."""
        return self._record("record", message_id, state, actor, queue)

    def reject(self, message_id: str, actor: str, queue: str) -> JobState:
        """REJECTED, unless the job already started (it then has its own outcome)."""
        return self._record("reject", message_id, JobState.REJECTED, actor, queue)

    def progress(self, message_id: str, percent: float, note: str | None = None) -> bool:
        """Record progress of a known job; False when the job is unknown (not tracked, or expired)."""
        return bool(self._progress(keys=[self.job_key(message_id)], args=[percent, note or ""]))

    def cancel(self, message_id: str) -> JobState | None:
        """Flag the job for cancellation; its state, or None when the job is unknown.

        Only a PENDING, STARTED or RETRY job gets the flag; a finished one is left as it is.
        """
        state = self._cancel(keys=[self.job_key(message_id)])
        return JobState(_text(state)) if state else None

    def cancel_requested(self, message_ids: Iterable[str]) -> set[str]:
        """Which of ``message_ids`` have their cancel flag set (one round trip)."""
        ids = list(message_ids)
        if not ids:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for message_id in ids:
            pipe.hget(self.job_key(message_id), "cancel")
        return {message_id for message_id, flag in zip(ids, pipe.execute(), strict=True) if flag}

    def get(self, message_id: str) -> JobRecord | None:
        fields = {_text(k): _text(v) for k, v in self.client.hgetall(self.job_key(message_id)).items()}
        if "state" not in fields:
            return None
        return JobRecord(
            id=message_id,
            actor=fields.get("actor", ""),
            queue=fields.get("queue", ""),
            state=JobState(fields["state"]),
            progress=float(fields["progress"]) if "progress" in fields else None,
            note=fields.get("note") or None,
            cancel_requested=fields.get("cancel") == "1",
            history=json.loads(fields.get("history", "[]")),
        )

    def _record(self, mode: str, message_id: str, state: JobState, actor: str, queue: str) -> JobState:
        reply = self._transition(keys=[self.job_key(message_id)], args=self._args(mode, state, actor, queue))
        return JobState(_text(reply))

    def _args(self, mode: str, state: JobState, actor: str, queue: str) -> list[str | int]:
        ttl = self.ttl if state is JobState.SUCCESS else self.failed_ttl
        return [mode, state.value, _iso(self.clock()), ttl, actor, queue, self.history_limit]


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
