"""Interrupts of running jobs: soft time limits and cancels raised into the worker threads.

Dramatiq's ``time_limit`` shape: one thread per worker process checks the running jobs every
:attr:`RunningJobs.TICK` seconds and raises :class:`~dramatiq_fairway.errors.SoftTimeLimitExceeded`
or :class:`~dramatiq_fairway.errors.Cancelled` into a thread with ``raise_thread_exception``. An
async exception lands only when the thread runs Python again, and would kill an idle worker
thread for good, so it is raised only while the thread still runs that very job inside its actor
call. ``JobStatus`` (``middlewares/status.py``) registers each job and reads the cancelled ids.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import redis
from dramatiq.actor import Actor
from dramatiq.middleware.threading import raise_thread_exception

from ..errors import Cancelled, SoftTimeLimitExceeded
from ..store.status import CancelledJobs

CANCEL_POLL_INTERVAL = 0.5
# Seconds a worker's shutdown waits for the running-jobs thread to finish a check (a state-store call).
STOP_TIMEOUT = 5.0


@dataclass(eq=False)
class _Running:
    message_id: str | None
    soft_deadline: float | None
    interrupted: bool = False


class RunningJobs:
    """Per worker process, a thread that raises soft time limits and cancels into worker threads.

    ``cancelled`` gives the process's view of cancelled ids (built on first use by ``JobStatus``);
    ``on_store_error`` counts a refresh lost to a state-store outage.
    """

    TICK = 0.05

    def __init__(
        self,
        logger: logging.Logger,
        cancelled: Callable[[], CancelledJobs],
        on_store_error: Callable[[redis.RedisError], None],
    ) -> None:
        self.logger = logger
        self.cancelled = cancelled
        self.on_store_error = on_store_error
        self.jobs: dict[int, _Running] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_poll = 0.0

    def add(self, message_id: str | None, soft_limit_ms: float | None) -> None:
        deadline = time.monotonic() + soft_limit_ms / 1000 if soft_limit_ms else None
        with self.lock:
            self.jobs[threading.get_ident()] = _Running(message_id, deadline)
            if self.thread is None or not self.thread.is_alive():
                self.stopping.clear()
                self.thread = threading.Thread(target=self._run, name="fairway-running-jobs", daemon=True)
                self.thread.start()

    def remove(self) -> None:
        with self.lock:
            self.jobs.pop(threading.get_ident(), None)

    def stop(self) -> None:
        """Stop the thread and wait for a check in progress: none may land after the worker stopped."""
        self.stopping.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=STOP_TIMEOUT)

    def _run(self) -> None:
        while not self.stopping.wait(self.TICK):
            try:
                self._check()
            except Exception:
                self.logger.exception("Unhandled error while checking running jobs.")

    def _check(self) -> None:
        now = time.monotonic()
        with self.lock:
            jobs = dict(self.jobs)
        due: dict[int, type[BaseException]] = {
            tid: SoftTimeLimitExceeded for tid, job in jobs.items() if job.soft_deadline and now >= job.soft_deadline
        }
        if now - self.last_poll >= CANCEL_POLL_INTERVAL:
            self.last_poll = now
            try:
                self.cancelled().refresh()
            except redis.RedisError as error:
                self.on_store_error(error)
            cancelled = self.cancelled()
            tracked = {job.message_id: tid for tid, job in jobs.items() if job.message_id is not None}
            due.update({tid: Cancelled for message_id, tid in tracked.items() if message_id in cancelled})
        for thread_id, exception in due.items():
            self._interrupt(thread_id, jobs[thread_id], exception)

    def _interrupt(self, thread_id: int, job: _Running, exception: type[BaseException]) -> None:
        with self.lock:
            # The thread must still run this very job, inside the actor call: an exception landing
            # in middleware hooks or in an idle worker thread would kill that thread for good.
            if self.jobs.get(thread_id) is not job or job.interrupted or not _in_actor_call(thread_id):
                return
            if exception is SoftTimeLimitExceeded:
                job.soft_deadline = None
            else:
                job.interrupted = True
            # A cancel is asked for: the retry middleware logs the job's end, once, at INFO.
            level = logging.DEBUG if exception is Cancelled else logging.WARNING
            self.logger.log(
                level, "Raising %s in the worker thread running %r.", exception.__name__, job.message_id or "a job"
            )
            raise_thread_exception(thread_id, exception)


_ACTOR_CALL = Actor.__call__.__code__


def _in_actor_call(thread_id: int) -> bool:
    frame: FrameType | None = sys._current_frames().get(thread_id)
    while frame is not None:
        if frame.f_code is _ACTOR_CALL:
            return True
        frame = frame.f_back
    return False
