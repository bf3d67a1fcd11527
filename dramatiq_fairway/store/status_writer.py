"""``StatusWriter``: one process's job status changes, queued and written in one pipeline per flush.

The store (:mod:`.status`) makes one round trip per call; a worker records through this writer
instead, so a job's status costs a deque append on the job's thread.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from .history import Attempt, HistoryStore
from .scripts import ScriptCall, run_scripts
from .status_model import JobState, Move, iso_from_millis

if TYPE_CHECKING:
    from .status import JobStatusStore


class StatusWriter:
    """One process's status changes, queued and written in one pipeline per flush.

    A worker records STARTED, outcomes and progress here instead of paying a round trip for each:
    a background thread writes what waited ``interval`` seconds in one pipeline, and a fast job's
    STARTED and outcome travel as one script call. Queueing a change is a deque append with no
    lock; the merging and the time formatting happen in the flush, in one warm thread rather than
    in every worker thread (bench/hotpath.py). Writes leave in the order they were made (one flush
    at a time). A failed flush drops its changes and reports them to ``on_error`` (status is best
    effort: docs/design.md, "When the state store is down").

    With a ``history`` store, finished jobs queued by :meth:`finished` are added to the per-minute
    history buckets by one more script call in the same pipeline (best effort: its error reply
    never fails the status writes).
    """

    def __init__(
        self,
        store: JobStatusStore,
        *,
        interval: float = 0.05,
        on_error: Callable[[redis.RedisError, int], None] | None = None,
        history: HistoryStore | None = None,
    ) -> None:
        self.store = store
        self.history = history
        self._finished: deque[Attempt] = deque()
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

    def finished(self, attempt: Attempt) -> None:
        """Queue a job's attempt for the history buckets (dropped without a ``history`` store)."""
        if self.history is not None:
            self._finished.append(attempt)
            self._wake()

    def flush(self) -> None:
        """Write every queued change now (returns at once when nothing waits)."""
        with self._flushing:
            # One status_transition.lua call per job (its key hashes anywhere, and a call touches
            # one slot), all in one pipeline: a job's changes merged into one move, in the order
            # the first of them was made, among the other calls (progress) as they were made.
            changes: list[Move | ScriptCall] = []
            open_moves: dict[str, Move] = {}
            queue, format_time = self._queue, self.store.format_time
            # popleft, not a swap: a change queued while this runs is never lost.
            while queue:
                change = queue.popleft()
                if isinstance(change, ScriptCall):
                    changes.append(change)
                    continue
                at = format_time(change.at)
                record = change.mode == "record"
                if record and (move := open_moves.get(change.message_id)) is not None:
                    move.states.append((change.state, at))
                    continue
                enqueued_ms = change.enqueued_ms
                move = Move(
                    change.mode,
                    change.message_id,
                    [(change.state, at)],
                    change.actor,
                    change.queue,
                    "" if enqueued_ms is None else iso_from_millis(enqueued_ms),
                )
                changes.append(move)
                if record:
                    open_moves[change.message_id] = move
            history = self._history_call()
            if not changes and history is None:
                return
            move_call = self.store.move_call
            calls = [change if isinstance(change, ScriptCall) else move_call(change) for change in changes]
            try:
                if history is None:
                    run_scripts(self.store.client, calls)
                else:
                    run_scripts(self.store.client, calls, best_effort=[history])
            except redis.RedisError as error:
                if self.on_error is None:
                    raise
                self.on_error(error, len(changes))

    def _history_call(self) -> ScriptCall | None:
        if self.history is None or not self._finished:
            return None
        attempts = []
        while self._finished:
            attempts.append(self._finished.popleft())
        return self.history.attempts_call(attempts)

    def close(self) -> None:
        """Write what waits and stop the background thread."""
        self._closed = True
        self._queued.set()
        self.flush()

    def _put(self, change: _Queued | ScriptCall) -> None:
        self._queue.append(change)
        self._wake()

    def _wake(self) -> None:
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
