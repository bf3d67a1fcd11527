"""Job status and idempotency keys in the state store.

Keys (``{namespace}`` is ``FAIRWAY_NAMESPACE``):

``{namespace}:job:{message_id}``
    Hash: ``state``, ``actor``, ``queue``, ``history`` (JSON list of ``{"state", "at"}``, oldest
    first, at most ``history_limit`` entries), ``progress`` and ``note`` (set by
    ``dramatiq_fairway.progress``), ``cancel`` (``"1"`` once an operator cancelled the job),
    ``tenant``, ``level`` and ``enqueued`` (ISO time of the PENDING entry), written with PENDING
    so that a bulk cancel selects queued jobs by them (:mod:`.status_bulk`).
    TTL: ``FAIRWAY_STATUS__TTL`` (1 h) after SUCCESS, ``FAIRWAY_STATUS__FAILED_TTL`` (7 days) after
    any other state, so a job that waits, fails or is cancelled stays visible for a week while the
    many successful ones cost one hour of memory. Every change resets the TTL.
``{namespace}:unique:{key}``
    String holding the id of the message that claimed the idempotency key; TTL ``unique_ttl``.
``{namespace}:cancelled``
    Stream of the ids of cancelled jobs (field ``id``), capped at about :data:`CANCELLED_KEPT`
    entries, no TTL. Workers follow it (:class:`CancelledJobs`) so that a queued job's cancel
    flag costs no read per job; its ids are ordered by the server, so no worker clock matters.

Every multi-step update is one Lua script (beside this module). A job's hash and a unique key are
separate script calls (they never share a hash tag) sent in one pipeline: one round trip.
Workers write through :class:`StatusWriter`, which queues changes and writes them in one pipeline.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..connections import state_store_client
from ..settings import Settings
from .scripts import LuaScript, ScriptCall, run_scripts
from .status_model import (
    JobRecord,
    JobStart,
    JobState,
    Move,
    StateChange,
    iso_from_datetime,
    iso_from_millis,
    iso_from_seconds,
)
from .status_writer import StatusWriter

# The model and the writer are re-exported: this module was their import path before the split.
__all__ = [
    "CANCELLED_KEPT",
    "CancelledJobs",
    "JobRecord",
    "JobStart",
    "JobState",
    "JobStatusStore",
    "Move",
    "PendingJob",
    "StateChange",
    "StatusWriter",
    "iso_from_datetime",
    "iso_from_millis",
    "iso_from_seconds",
]

_SCRIPTS = Path(__file__).parent
CANCELLED_KEPT = 10_000
# A job at enqueue: (message id, actor, queue, tenant, level), as ``enqueued_many`` takes it.
PendingJob = tuple[str, str, str, str, int | None]


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
        self.clock = clock
        self._transition = LuaScript.load(_SCRIPTS / "status_transition.lua")
        self._progress = LuaScript.load(_SCRIPTS / "status_progress.lua")
        self._cancel = LuaScript.load(_SCRIPTS / "status_cancel.lua")
        self._claim = LuaScript.load(_SCRIPTS / "unique_claim.lua")
        self._unsend = LuaScript.load(_SCRIPTS / "status_unsend.lua")
        self._enqueue = LuaScript.load(_SCRIPTS / "status_enqueue.lua")

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

    @property
    def cancelled_key(self) -> str:
        return f"{self.namespace}:cancelled"

    def enqueued(self, message_id: str, actor: str, queue: str, tenant: str = "", level: int | None = None) -> None:
        """PENDING, unless the job is already known (a retry or a move out of the delay queue).

        ``tenant`` and ``level`` (the message's, once FairPriority set them) are kept with it, so
        that a bulk cancel can select queued jobs by them (:mod:`.status_bulk`).
        """
        run_scripts(self.client, [self.enqueued_call(message_id, actor, queue, tenant, level)])

    def enqueued_call(
        self,
        message_id: str,
        actor: str,
        queue: str,
        tenant: str = "",
        level: int | None = None,
        *,
        at: str | None = None,
    ) -> ScriptCall:
        """The script call of ``enqueued`` (at ``at``, default now), for a pipeline of the caller's.

        A script of its own (``status_enqueue.lua``), not a ``move_call``: it runs on every
        send. A job already known is left as it is."""
        at = at or self.now()
        history = f'[{{"state":"PENDING","at":{json.dumps(at)}}}]'
        args = [self.failed_ttl, actor, queue, at, history, tenant, "" if level is None else level]
        return ScriptCall(self._enqueue, [self.job_key(message_id)], args)

    def unsent_call(self, message_id: str, at: str) -> ScriptCall:
        """The call that takes back the PENDING an ``enqueued_call`` at ``at`` created, when the
        message was never queued after all (``status_unsend.lua``; a job known before stays)."""
        return ScriptCall(self._unsend, [self.job_key(message_id)], [at])

    def enqueued_many(self, jobs: list[PendingJob]) -> None:
        """``enqueued`` for each (message id, actor, queue, tenant, level), in one round trip.

        One call per job (a call touches one hash slot, and job keys hash anywhere): an
        ``enqueue_many`` of 1,000 messages pays this for each (docs/benchmarks.md, "Producer")."""
        at = self.now()
        run_scripts(self.client, [self.enqueued_call(*job, at=at) for job in jobs])

    def start(
        self,
        message_id: str,
        actor: str,
        queue: str,
        *,
        track: bool = True,
        unique_key: str | None = None,
        unique_ttl: int = 3_600_000,
        requeued_from: str | None = None,
        enqueued_at: str = "",
    ) -> JobStart:
        """Claim the unique key (if any) and mark the job STARTED, in one round trip.

        A job requeued from a dead letter (``requeued_from``, the failed message's id) takes the
        key over from that message (see ``unique_claim.lua``).

        The job comes back REVOKED when it was cancelled while queued. A duplicate is marked
        REJECTED (a second call: duplicates are the rare path).
        """
        calls = []
        if unique_key is not None:
            calls.append(
                ScriptCall(self._claim, [self.unique_key(unique_key)], [message_id, unique_ttl, requeued_from or ""])
            )
        if track:
            calls.append(
                self.transition_call(
                    "start",
                    message_id,
                    [(JobState.STARTED, self.now())],
                    actor=actor,
                    queue=queue,
                    enqueued_at=enqueued_at,
                )
            )
        replies = run_scripts(self.client, calls)
        duplicate = unique_key is not None and int(replies.pop(0)) == 0
        state = JobState(_text(replies[0])) if track else None
        if duplicate and track:
            state = self.finish(message_id, JobState.REJECTED, actor, queue)
        return JobStart(state=state, duplicate=duplicate)

    def finish(self, message_id: str, state: JobState, actor: str, queue: str) -> JobState:
        """Record ``state`` (SUCCESS, RETRY, FAILURE, DEAD_LETTER, REVOKED, REJECTED)."""
        return self._record("record", message_id, state, actor, queue)

    def progress(self, message_id: str, percent: float, note: str | None = None) -> bool:
        """Record progress of a known job; False when the job is unknown (not tracked, or expired)."""
        [known] = run_scripts(self.client, [self.progress_call(message_id, percent, note)])
        return bool(known)

    def cancel(self, message_id: str) -> JobState | None:
        """Flag the job for cancellation; its state, or None when the job is unknown.

        Only a PENDING, STARTED or RETRY job gets the flag; a finished one is left as it is.
        """
        state = self._cancel.run(self.client, [self.job_key(message_id)])
        if not state:
            return None
        result = JobState(_text(state))
        if not result.finished:
            self.client.xadd(self.cancelled_key, {"id": message_id}, maxlen=CANCELLED_KEPT, approximate=True)
        return result

    def cancelled_after(self, stream_id: str | None) -> tuple[list[str], str | None]:
        """Ids of jobs cancelled after ``stream_id`` (all kept ones for None) and the newest stream id."""
        low = "-" if stream_id is None else f"({stream_id}"
        entries = self.client.xrange(self.cancelled_key, low, "+")
        if not entries:
            return [], stream_id
        return [_text(fields[b"id"]) for _, fields in entries], _text(entries[-1][0])

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

    def now(self) -> str:
        """The current time as the history records it."""
        return self.format_time(time.time() if self.clock is None else self.clock())

    @staticmethod
    def format_time(at: float | dt.datetime) -> str:
        """A Unix time (the default clock's, which skips datetime per job) or a datetime, as the history records it."""
        return iso_from_datetime(at) if isinstance(at, dt.datetime) else iso_from_seconds(at)

    def transition_call(
        self,
        mode: str,
        message_id: str,
        states: list[tuple[JobState, str]],
        *,
        actor: str,
        queue: str,
        enqueued_at: str = "",
    ) -> ScriptCall:
        """The script call that moves a job through ``states`` (pairs of state and time); its reply
        is the job's state after the call."""
        return self.move_call(Move(mode, message_id, states, actor, queue, enqueued_at))

    def move_call(self, move: Move) -> ScriptCall:
        """The script call making ``move``; its reply is the job's state after it.

        One job per call: job keys hash anywhere and a call touches one hash slot, so a worker's
        flush sends one call per job in one pipeline (docs/design.md, "Redis Cluster")."""
        args: list[str | int | float] = [
            self.ttl,
            self.failed_ttl,
            self.history_limit,
            move.mode,
            move.actor,
            move.queue,
            move.enqueued_at,
            len(move.states),
        ]
        for state, at in move.states:
            args += (_STATE_VALUES[state], at)
        return ScriptCall(self._transition, [self.job_key(move.message_id)], args)

    def progress_call(self, message_id: str, percent: float, note: str | None) -> ScriptCall:
        return ScriptCall(self._progress, [self.job_key(message_id)], [percent, note or ""])

    def _record(self, mode: str, message_id: str, state: JobState, actor: str, queue: str) -> JobState:
        [reply] = run_scripts(
            self.client, [self.transition_call(mode, message_id, [(state, self.now())], actor=actor, queue=queue)]
        )
        return JobState(_text(reply))


class CancelledJobs:
    """This process's copy of the cancelled-jobs stream, so checking a job costs no round trip.

    ``refresh`` reads what was added since the last read; a copy older than ``max_age`` seconds
    is refreshed before it answers (a worker's first job, or after its refresher stalled).
    """

    def __init__(self, store: JobStatusStore, *, max_age: float = 1.0) -> None:
        self.store = store
        self.max_age = max_age
        self._ids: set[str] = set()
        self._last: str | None = None
        self._kept = CANCELLED_KEPT
        self._refreshed = 0.0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            # Forget ids once they are twice what the stream keeps (the stream was trimmed under
            # them), and read it again whole. A bulk cancel may leave the stream longer than
            # CANCELLED_KEPT for a while: measured against the last whole read, so that a long
            # stream is read whole once, not at every refresh.
            if len(self._ids) > 2 * self._kept:
                self._ids, self._last = set(), None
            whole = self._last is None
            ids, self._last = self.store.cancelled_after(self._last)
            self._ids.update(ids)
            if whole:
                self._kept = max(CANCELLED_KEPT, len(ids))
            self._refreshed = time.monotonic()

    def __contains__(self, message_id: object) -> bool:
        if time.monotonic() - self._refreshed > self.max_age:
            self.refresh()
        return message_id in self._ids


# ``JobState.value`` per state: the enum's ``value`` is a Python descriptor, read twice per job by the
# status writer's flush.
_STATE_VALUES = {state: state.value for state in JobState}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
