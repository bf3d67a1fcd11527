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
import functools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..connections import state_store_client
from ..settings import Settings
from .scripts import LuaScript, ScriptCall, run_scripts

_SCRIPTS = Path(__file__).parent
CANCELLED_KEPT = 10_000
# Jobs per status_transition.lua call: a flush of thousands runs as calls of about a millisecond
# each, so Redis (often the broker too) is never blocked for long.
MOVES_PER_CALL = 100


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
        self.clock = clock
        self._transition = LuaScript.load(_SCRIPTS / "status_transition.lua")
        self._progress = LuaScript.load(_SCRIPTS / "status_progress.lua")
        self._cancel = LuaScript.load(_SCRIPTS / "status_cancel.lua")
        self._claim = LuaScript.load(_SCRIPTS / "unique_claim.lua")

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
        state = JobState(_text(replies[0][0])) if track else None
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
        return _iso(at) if isinstance(at, dt.datetime) else iso_from_seconds(at)

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
        is a list holding the job's state after the call."""
        return self.moves_call([Move(mode, message_id, states, actor, queue, enqueued_at)])

    def moves_call(self, moves: list[Move]) -> ScriptCall:
        """One script call making every move of ``moves`` in order; its reply lists each job's state."""
        args: list[str | int | float] = [self.ttl, self.failed_ttl, self.history_limit]
        for move in moves:
            args += [move.mode, move.actor, move.queue, move.enqueued_at, len(move.states)]
            for state, at in move.states:
                args += [state.value, at]
        return ScriptCall(self._transition, [self.job_key(move.message_id) for move in moves], args)

    def progress_call(self, message_id: str, percent: float, note: str | None) -> ScriptCall:
        return ScriptCall(self._progress, [self.job_key(message_id)], [percent, note or ""])

    def _record(self, mode: str, message_id: str, state: JobState, actor: str, queue: str) -> JobState:
        [[reply]] = run_scripts(
            self.client, [self.transition_call(mode, message_id, [(state, self.now())], actor=actor, queue=queue)]
        )
        return JobState(_text(reply))


@dataclass
class Move:
    """One job's move through ``states`` (pairs of state and ISO time) in status_transition.lua."""

    mode: str
    message_id: str
    states: list[tuple[JobState, str]]
    actor: str
    queue: str
    enqueued_at: str = ""


class StatusWriter:
    """One process's status changes, queued and written in one pipeline per flush.

    A worker records STARTED, outcomes and progress here instead of paying a round trip for each:
    a background thread writes what waited ``interval`` seconds in one pipeline, and a fast job's
    STARTED and outcome travel as one script call. Queueing a change is a deque append with no
    lock; the merging and the time formatting happen in the flush, in one warm thread rather than
    in every worker thread (bench/hotpath.py). Writes leave in the order they were made (one flush
    at a time). A failed flush drops its changes and reports them to ``on_error`` (status is best
    effort: docs/design.md, "When the state store is down").
    """

    def __init__(
        self,
        store: JobStatusStore,
        *,
        interval: float = 0.05,
        on_error: Callable[[redis.RedisError, int], None] | None = None,
    ) -> None:
        self.store = store
        self.interval = interval
        self.on_error = on_error
        self._queue: deque[_Queued | ScriptCall] = deque()
        self._queued = threading.Event()
        self._flushing = threading.Lock()
        self._starting = threading.Lock()
        self._running = False
        self._closed = False

    def transition(
        self,
        message_id: str,
        state: JobState,
        actor: str,
        queue: str,
        *,
        mode: str = "record",
        enqueued_ms: int | None = None,
    ) -> None:
        """Queue a move of the job to ``state`` (now); ``enqueued_ms``: the message's timestamp."""
        at = time.time() if self.store.clock is None else self.store.clock()
        self._put(_Queued(at, message_id, state, actor, queue, mode, enqueued_ms))

    def progress(self, message_id: str, percent: float, note: str | None = None) -> None:
        self._put(self.store.progress_call(message_id, percent, note))

    def flush(self) -> None:
        """Write every queued change now (returns at once when nothing waits)."""
        with self._flushing:
            changes: list[_Transition | ScriptCall] = []
            open_records: dict[str, _Transition] = {}
            # popleft, not a swap: a change queued while this runs is never lost.
            while self._queue:
                change = self._queue.popleft()
                if isinstance(change, ScriptCall):
                    changes.append(change)
                    continue
                at = self.store.format_time(change.at)
                pending = open_records.get(change.message_id)
                if pending is not None and change.mode == "record":
                    pending.states.append((change.state, at))
                    continue
                transition = _Transition(
                    change.mode, change.message_id, [(change.state, at)], change.actor, change.queue, change.enqueued_ms
                )
                changes.append(transition)
                if change.mode == "record":
                    open_records[change.message_id] = transition
            if not changes:
                return
            try:
                run_scripts(self.store.client, self._calls(changes))
            except redis.RedisError as error:
                if self.on_error is None:
                    raise
                self.on_error(error, len(changes))

    def _calls(self, changes: list[_Transition | ScriptCall]) -> list[ScriptCall]:
        """``changes`` in order, each run of transitions as script calls of up to MOVES_PER_CALL jobs."""
        calls: list[ScriptCall] = []
        moves: list[Move] = []
        for change in changes:
            if isinstance(change, ScriptCall):
                calls.extend(self._moves_calls(moves))
                moves = []
                calls.append(change)
            else:
                moves.append(change.move())
        calls.extend(self._moves_calls(moves))
        return calls

    def _moves_calls(self, moves: list[Move]) -> list[ScriptCall]:
        return [self.store.moves_call(moves[i : i + MOVES_PER_CALL]) for i in range(0, len(moves), MOVES_PER_CALL)]

    def close(self) -> None:
        """Write what waits and stop the background thread."""
        self._closed = True
        self._queued.set()
        self.flush()

    def _put(self, change: _Queued | ScriptCall) -> None:
        self._queue.append(change)
        if not self._running:
            self._start()
        # The flag is cleared by the thread before it takes the queue: a change queued after
        # that sets it again, one queued before is taken by that flush.
        if not self._queued.is_set():
            self._queued.set()

    def _start(self) -> None:
        with self._starting:
            if not self._running:
                self._closed = False
                self._running = True
                threading.Thread(target=self._run, name="fairway-status-writer", daemon=True).start()

    def _run(self) -> None:
        try:
            while True:
                self._queued.wait()
                if self._closed:
                    return
                time.sleep(self.interval)
                self._queued.clear()
                try:
                    self.flush()
                except Exception:  # a bug here must not silently stop status for the whole process
                    logging.getLogger(__name__).exception("Unhandled error while writing job status.")
        finally:
            self._running = False


@dataclass
class _Queued:
    """A transition as a worker thread queued it: the time unformatted, nothing merged yet."""

    at: float | dt.datetime
    message_id: str
    state: JobState
    actor: str
    queue: str
    mode: str
    enqueued_ms: int | None


@dataclass
class _Transition:
    mode: str
    message_id: str
    states: list[tuple[JobState, str]]
    actor: str
    queue: str
    # Converted when written: a fast job's STARTED and outcome share one conversion.
    enqueued_ms: int | None

    def move(self) -> Move:
        enqueued_at = "" if self.enqueued_ms is None else iso_from_millis(self.enqueued_ms)
        return Move(self.mode, self.message_id, self.states, self.actor, self.queue, enqueued_at)


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
        self._refreshed = 0.0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            if len(self._ids) > 2 * CANCELLED_KEPT:
                self._ids, self._last = set(), None
            ids, self._last = self.store.cancelled_after(self._last)
            self._ids.update(ids)
            self._refreshed = time.monotonic()

    def __contains__(self, message_id: object) -> bool:
        if time.monotonic() - self._refreshed > self.max_age:
            self.refresh()
        return message_id in self._ids


def iso_from_millis(millis: int) -> str:
    """A message timestamp (ms since the epoch) as the history records times."""
    return f"{_second_prefix(millis // 1000)}.{millis % 1000:03d}Z"


def iso_from_seconds(at: float) -> str:
    """A Unix time as the history records times (``2026-12-05T08:16:11.752Z``)."""
    return iso_from_millis(int(at * 1000))


@functools.lru_cache(maxsize=8)
def _second_prefix(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
