"""JobStatus: every job's state with timestamps, progress, cancel, idempotency and soft time limits.

States (docs/design.md): PENDING when enqueued, STARTED, then SUCCESS, RETRY (failed, will run
again), FAILURE (failed, no retry left, no dead-letter store), DEAD_LETTER (failed and recorded),
REVOKED (cancelled) or REJECTED (refused before running: unknown actor, too large on arrival,
duplicate ``unique_key``).
Kept in the state store by :class:`~dramatiq_fairway.store.status.JobStatusStore`. PENDING is
written when ``send`` returns; a worker queues STARTED, outcomes and progress in a
:class:`~dramatiq_fairway.store.status_writer.StatusWriter` that writes everything that waited in the
last 50 ms in one pipeline, so a job costs no round trip of its own unless it has a ``unique_key``
(one, to claim it). A worker killed with SIGKILL loses at most those 50 ms of status; its
messages are redelivered and their status written when they run again.

Options (actor; per message where JSON allows):

``track_status`` (bool, default true)
    False keeps no status for the job (and it then cannot be cancelled or report progress).
``unique_key`` (str on a message; str or ``callable(*args, **kwargs) -> str`` on the actor)
    Idempotency, decided when the job starts (``before_enqueue`` also fires for retries and moves
    out of the delay queue): the first message holding the key runs, a retry of it runs again, any
    other message with the key within ``unique_ttl`` is skipped as REJECTED (its history shows
    STARTED then REJECTED: the claim and the start share one round trip).
``unique_ttl`` (ms, default one hour), ``unique_strict`` (actor, default false)
    With the state store down a unique job runs anyway (fail-open) unless ``unique_strict``,
    which fails the attempt so the retry middleware tries it later.
``soft_time_limit`` (ms)
    :class:`~dramatiq_fairway.errors.SoftTimeLimitExceeded` is raised inside the actor once, so it
    can clean up; Dramatiq's ``time_limit`` stays the hard limit.

Cancel (``fairway jobs cancel ID``): a queued job is skipped as REVOKED when a worker takes it; a
running one gets :class:`~dramatiq_fairway.errors.Cancelled` raised into its thread, as
Dramatiq's time limits do, and ends REVOKED (``ClassifiedRetries`` neither retries nor
dead-letters it). Each worker process follows the stream of cancelled ids twice a second
(:class:`~dramatiq_fairway.store.status.CancelledJobs`), so a job cancelled less than half a
second before a worker takes it may start, and is then interrupted as a running job. An async
exception lands only when the thread runs Python again (a blocking C call finishes first), and is
raised only while the thread is still inside that job's actor call, so it never hits the next job
or an idle worker thread. Code that catches ``BaseException`` can swallow it.

Every attempt, tracked or not, is also added to the per-minute history buckets (outcome, tenant
served, wait and run time: ``store/history.py``) through the same writer, in its flush's pipeline.

When the state store is down, status and progress updates are dropped and counted
(``dropped_updates``) with one warning per minute.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import redis
from dramatiq import Broker, Message, Middleware
from dramatiq.actor import Actor
from dramatiq.broker import MessageProxy
from dramatiq.errors import ActorNotFound
from dramatiq.logging import get_logger
from dramatiq.middleware import MiddlewareError, Shutdown, SkipMessage

from ..errors import Cancelled
from ..outage import OutageWarning
from ..settings import Settings, load_settings
from ..store.history import HistoryStore
from ..store.send_writes import accepting, rode_along
from ..store.status import CancelledJobs, JobState, JobStatusStore, PendingJob, StatusWriter, iso_from_millis
from .attempt_times import AttemptTimes
from .consumer_hooks import UndecodableRecorder
from .interrupts import CANCEL_POLL_INTERVAL, RunningJobs

DEFAULT_UNIQUE_TTL = 3_600_000
# The options ``_check_options`` checks: a message with none of them skips it.
_OPTION_NAMES = frozenset({"track_status", "unique_key", "unique_ttl", "soft_time_limit"})

# The PENDING statuses an ``enqueue_many`` collects (``JobStatus.pending_in_one_write``).
_pending_batch: contextvars.ContextVar[list[PendingJob] | None] = contextvars.ContextVar(
    "fairway_pending_batch", default=None
)
_current_job: contextvars.ContextVar[tuple[StatusWriter, str] | None] = contextvars.ContextVar(
    "fairway_current_job", default=None
)


class StatusOptionError(MiddlewareError, ValueError):
    """``track_status``, ``unique_key``, ``unique_ttl`` or ``soft_time_limit`` has an unusable value."""


class UniqueKeyUnavailable(MiddlewareError):
    """The state store cannot decide a ``unique_strict`` job's idempotency key; the attempt fails."""


def progress(percent: float, note: str | None = None) -> None:
    """Record the progress of the job this thread is running (0 to 100, and an optional note).

    Visible to ``fairway jobs show`` in any process within 50 ms. Does nothing for a job whose
    status is not tracked; raises ``RuntimeError`` outside a job run by a worker with ``JobStatus``.
    """
    job = _current_job.get()
    if job is None:
        raise RuntimeError("progress() is only available inside an actor run by a worker with JobStatus")
    if not 0 <= percent <= 100:
        raise ValueError(f"progress: percent must be between 0 and 100, got {percent!r}")
    writer, message_id = job
    writer.progress(message_id, percent, note)


class JobStatus(Middleware):
    """Records job states and progress; cancels jobs; enforces ``unique_key`` and soft time limits."""

    def __init__(self, *, settings: Settings | None = None, store: JobStatusStore | None = None) -> None:
        self.logger = get_logger(__name__, type(self))
        self.settings = settings or load_settings()
        self._store = store
        self._writer: StatusWriter | None = None
        self._cancelled: CancelledJobs | None = None
        self._running = RunningJobs(self.logger, lambda: self.cancelled, _StoreOutage.shared.dropped)
        self._own_skips: set[str] = set()
        self._times = AttemptTimes()

    @property
    def actor_options(self) -> set[str]:
        return {"track_status", "unique_key", "unique_ttl", "unique_strict", "soft_time_limit"}

    @property
    def store(self) -> JobStatusStore:
        # Built on first use: with FAIRWAY_BROKER=rabbitmq alone the state store is the embedded
        # Redis, which a producer that never sends must not start.
        if self._store is None:
            self._store = JobStatusStore.from_settings(self.settings)
        return self._store

    @property
    def writer(self) -> StatusWriter:
        if self._writer is None:
            history = HistoryStore(
                self.store.client, self.store.namespace, max_tenants=self.settings.metrics.max_tenants
            )
            self._writer = StatusWriter(self.store, on_error=_StoreOutage.shared.dropped, history=history)
        return self._writer

    @property
    def cancelled(self) -> CancelledJobs:
        if self._cancelled is None:
            self._cancelled = CancelledJobs(self.store, max_age=2 * CANCEL_POLL_INTERVAL)
        return self._cancelled

    @property
    def dropped_updates(self) -> int:
        return _StoreOutage.shared.count

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        options = {name: value for name, value in actor.options.items() if not callable(value)}
        _check_options(options, f"actor {actor.actor_name!r}")

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        # Refused at send: when the job starts, a bad value could only be logged (Dramatiq
        # swallows a before_process_message error) and the job would run unchecked.
        if not _OPTION_NAMES.isdisjoint(message.options):
            _check_options(message.options, f"message {message.message_id}")
        if self._tracked(broker, message):
            # On FairRedisBroker with the state store on its Redis: PENDING in the enqueue's round
            # trip; on FairRabbitmqBroker: in its tenant-routing call's, taken back if the publish fails.
            writes = accepting(self._store_client)
            if writes is not None:
                store = self.store
                at = store.now()
                writes.add(
                    message.message_id,
                    store.enqueued_call(*_pending(message), at=at),
                    _StoreOutage.shared.dropped,
                    undo=functools.partial(store.unsent_call, message.message_id, at),
                )

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        # A write that rode along was tracked: asked first, it spares the actor lookup on every send.
        if not rode_along(message.message_id) and self._tracked(broker, message):
            batch = _pending_batch.get()
            if batch is None:
                self._safely(self.store.enqueued, *_pending(message))
            else:
                batch.append(_pending(message))

    def _store_client(self) -> redis.Redis:
        return self.store.client

    @contextlib.contextmanager
    def pending_in_one_write(self) -> Iterator[None]:
        """Inside it, the PENDING statuses of this thread's enqueues are collected and written in one
        round trip when it ends (``enqueue_many``): still after their messages were enqueued."""
        batch: list[PendingJob] = []
        token = _pending_batch.set(batch)
        try:
            yield
        finally:
            _pending_batch.reset(token)
            if batch:
                self._safely(self.store.enqueued_many, batch)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        actor = broker.get_actor(message.actor_name)
        options = message.options
        track = _tracks(actor, options)
        unique_key = _unique_key(actor, message)
        if track and self._was_cancelled(message):
            self._write(message, JobState.REVOKED, mode="revoke")
            self._skip(message, "it was cancelled")
        if unique_key is not None:
            self._start(actor, message, track=track, unique_key=unique_key)
        elif track:
            self._write(message, JobState.STARTED)
        soft_limit = options.get("soft_time_limit") or actor.options.get("soft_time_limit")
        if track or soft_limit:
            self._running.add(message.message_id if track else None, soft_limit)
        if track:
            _current_job.set((self.writer, message.message_id))
        self._times.started(message)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._running.remove()
        _current_job.set(None)
        state = self._outcome(broker, message, exception)
        if self._tracked(broker, message):
            self._write(message, state)
        self.writer.finished(self._times.finished(message, state))

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._running.remove()
        _current_job.set(None)
        state = self._failed_state(broker) if message.failed else JobState.REJECTED
        if message.message_id in self._own_skips:
            self._own_skips.discard(message.message_id)
            state = JobState.REVOKED  # cancelled or a duplicate: not an outcome the history counts
        elif self._tracked(broker, message):
            self._write(message, state)
        self.writer.finished(self._times.finished(message, state, ran=False))

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        # Messages for an unknown actor are failed in the consumer thread: only the nack hooks see
        # them. A job that ran already has its outcome, which ``reject`` leaves alone.
        if self._tracked(broker, message):
            self._write(message, JobState.REJECTED, mode="reject")

    def record_rejected(self, broker: Broker, message: Message[Any]) -> None:
        """A message refused by fairway's consumer before any hook saw it (too large on arrival)."""
        if self._tracked(broker, message):
            self._write(message, JobState.REJECTED, mode="reject")

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._running.stop()
        if self._writer is not None:
            self._writer.close()

    def _start(self, actor: Actor[Any, Any], message: MessageProxy, *, track: bool, unique_key: str) -> None:
        ttl = message.options.get("unique_ttl") or actor.options.get("unique_ttl", DEFAULT_UNIQUE_TTL)
        self.writer.flush()  # this job's earlier changes (a retry's) go first
        try:
            start = self.store.start(
                message.message_id,
                message.actor_name,
                message.queue_name,
                track=track,
                unique_key=unique_key,
                unique_ttl=int(ttl),
                requeued_from=_requeued_from(message),
                enqueued_at=_enqueued_at(message),
            )
        except redis.RedisError as error:
            if actor.options.get("unique_strict", False):
                raise UniqueKeyUnavailable(f"state store unavailable for unique_key {unique_key!r}") from error
            _StoreOutage.shared.dropped(error)
            return
        if start.duplicate:
            self._skip(message, f"unique_key {unique_key!r} is held by another message")
        if start.state is JobState.REVOKED:
            self._skip(message, "it was cancelled")

    def _skip(self, message: MessageProxy, reason: str) -> None:
        self.logger.info("Skipping %r: %s.", message.message_id, reason)
        self._own_skips.add(message.message_id)
        raise SkipMessage

    def _was_cancelled(self, message: MessageProxy) -> bool:
        try:
            return message.message_id in self.cancelled
        except redis.RedisError as error:
            _StoreOutage.shared.dropped(error)
            return False

    def _write(self, message: Message[Any] | MessageProxy, state: JobState, *, mode: str = "record") -> None:
        self.writer.transition(
            message.message_id,
            state,
            message.actor_name,
            message.queue_name,
            mode=mode,
            enqueued_ms=message.message_timestamp,
        )

    def _outcome(self, broker: Broker, message: MessageProxy, exception: BaseException | None) -> JobState:
        if isinstance(exception, Cancelled):
            return JobState.REVOKED
        if isinstance(exception, Shutdown) and not message.failed:
            return JobState.PENDING
        if message.failed:
            return self._failed_state(broker)
        return JobState.SUCCESS if exception is None else JobState.RETRY

    def _failed_state(self, broker: Broker) -> JobState:
        recorded = any(isinstance(m, UndecodableRecorder) for m in broker.middleware)
        return JobState.DEAD_LETTER if recorded else JobState.FAILURE

    def _tracked(self, broker: Broker, message: Message[Any] | MessageProxy) -> bool:
        options = message.options
        if "track_status" in options:
            return bool(options["track_status"])
        try:
            return _tracks(broker.get_actor(message.actor_name), options)
        except ActorNotFound:
            return True

    def _safely(self, update: Callable[..., Any], *args: Any) -> None:
        try:
            update(*args)
        except redis.RedisError as error:
            _StoreOutage.shared.dropped(error)


def _pending(message: Message[Any]) -> PendingJob:
    """The PENDING write's job: FairPriority (before this middleware) has set the tenant and level."""
    level = message.options.get("priority_level")
    tenant = message.options.get("tenant")
    return (
        message.message_id,
        message.actor_name,
        message.queue_name,
        tenant if isinstance(tenant, str) else "",
        int(level) if isinstance(level, int) and not isinstance(level, bool) else None,
    )


def _enqueued_at(message: MessageProxy) -> str:
    return iso_from_millis(message.message_timestamp)


def _check_options(options: dict[str, Any], where: str) -> None:
    if "track_status" in options and not isinstance(options["track_status"], bool):
        raise StatusOptionError(f"{where}: track_status must be true or false, got {options['track_status']!r}")
    key = options.get("unique_key")
    if key is not None and not (isinstance(key, str) and key):
        raise StatusOptionError(f"{where}: unique_key must be a non-empty string, got {key!r}")
    for name in ("unique_ttl", "soft_time_limit"):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise StatusOptionError(f"{where}: {name} must be a positive number of milliseconds, got {value!r}")


def _requeued_from(message: MessageProxy) -> str | None:
    # Set by ``DeadLetterStore.requeue``; the unique claim lets the copy take the key over.
    origin = message.options.get("requeued_from")
    return origin if isinstance(origin, str) and origin else None


def _unique_key(actor: Actor[Any, Any], message: MessageProxy) -> str | None:
    key = message.options.get("unique_key") or actor.options.get("unique_key")
    if key is None:
        return None
    if callable(key):
        key = key(*message.args, **message.kwargs)
    if not isinstance(key, str) or not key:
        raise ValueError(f"unique_key of {message.actor_name!r} must be a non-empty string, got {key!r}")
    return key


class _StoreOutage:
    """Counts status updates lost to a state-store outage; warns at most once a minute."""

    shared: _StoreOutage

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        self.warning = OutageWarning(get_logger(__name__, type(self)))

    def dropped(self, error: redis.RedisError, count: int = 1) -> None:
        with self.lock:
            self.count += count
            dropped = self.count
        self.warning.warn("State store unavailable, job status updates are dropped (%d so far): %s", dropped, error)


_StoreOutage.shared = _StoreOutage()


def _tracks(actor: Any, options: dict[str, Any]) -> bool:
    """Whether a job's status is kept: its message's ``track_status``, else its actor's (default on)."""
    if "track_status" in options:
        return bool(options["track_status"])
    return bool(actor.options.get("track_status", True))
