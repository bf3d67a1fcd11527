"""ContextAsyncIO: Dramatiq's AsyncIO middleware, with each coroutine run in its worker thread's
context, and soft time limits raised inside the coroutine.

Dramatiq's event loop thread starts every coroutine in the loop thread's own context, so what a
middleware puts in a context variable for the job (the job ``progress()`` reports to, the fields
of JSON log lines) would not reach an ``async def`` actor. Here the coroutine first takes over
the values of the worker thread that waits for it. The loop thread is a daemon thread.

Interrupts reach the worker thread that waits for the coroutine (``JobStatus`` and Dramatiq's
``TimeLimit`` raise them there). Dramatiq cancels the coroutine for any of them, so an actor would
see ``CancelledError`` for a soft limit and could not catch
:class:`~dramatiq_fairway.errors.SoftTimeLimitExceeded` as a sync actor can. Here a soft limit is
thrown into the coroutine at the ``await`` it is suspended in, and the worker thread goes on
waiting; every other interrupt (the hard ``time_limit``, ``Cancelled``, ``Shutdown``) still cancels.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar

from dramatiq import Broker
from dramatiq.asyncio import EventLoopThread, set_event_loop_thread
from dramatiq.middleware import AsyncIO
from dramatiq.threading import Interrupt

from ..errors import SoftTimeLimitExceeded

R = TypeVar("R")


class ContextAsyncIO(AsyncIO):
    """Runs ``async def`` actors like Dramatiq's ``AsyncIO``, in the calling worker thread's context."""

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        event_loop_thread = _ContextEventLoopThread(self.logger)
        event_loop_thread.start(timeout=1.0)
        set_event_loop_thread(event_loop_thread)


class _ContextEventLoopThread(EventLoopThread):
    def __init__(self, logger: Any) -> None:
        super().__init__(logger)
        # A worker stopped without its shutdown hooks (or a second worker on the same broker,
        # which replaces the process-wide loop) must not keep the interpreter from exiting.
        self.daemon = True

    def run_coroutine(self, coro: Awaitable[R]) -> R:
        if not self.loop.is_running():
            raise RuntimeError("Event loop is not running.")
        context = contextvars.copy_context()
        job = _Interruptible(coro)
        done = threading.Event()

        async def in_callers_context() -> R:
            try:
                for variable, value in context.items():
                    variable.set(value)
                job.task = asyncio.current_task()
                result: R = await job
                return result
            finally:
                done.set()

        future = asyncio.run_coroutine_threadsafe(in_callers_context(), self.loop)
        try:
            while True:
                try:
                    # A timeout, so that interrupts raised into this thread land here.
                    return future.result(timeout=self.interrupt_check_ival)
                except TimeoutError:
                    # Raised by the coroutine itself, or the wait timed out as it finished.
                    if future.done():
                        return future.result(timeout=0)
                except SoftTimeLimitExceeded:
                    if future.done():
                        # The coroutine's own (the soft limit it did not catch), or it had just ended.
                        return future.result(timeout=0)
                    self.loop.call_soon_threadsafe(job.interrupt, SoftTimeLimitExceeded)
        except Interrupt as interrupt:
            self.loop.call_soon_threadsafe(future.cancel)
            # The coroutine's cleanup runs after the cancel: wait for it, not for the future.
            if not done.wait(timeout=1.0):
                raise RuntimeError("Timed out while waiting for coroutine.") from interrupt
            raise
        finally:
            # An exception raised in the coroutine would otherwise keep a reference cycle alive
            # through this frame (exception -> traceback -> frame -> future -> exception).
            del future


class _Interruptible:
    """Awaits ``coro`` step by step, so that an interrupt can be thrown in at the ``await`` it is in.

    asyncio can only wake a suspended task with ``CancelledError``: :meth:`interrupt` cancels the
    task, and the cancel, when it arrives here, is thrown into ``coro`` as the interrupt instead
    (and taken back with ``uncancel()``, so the task is not left cancelling). Any other cancel
    passes through as it is.
    """

    def __init__(self, coro: Awaitable[Any]) -> None:
        self.coro: Coroutine[Any, Any, Any] = coro  # type: ignore[assignment]
        self.task: asyncio.Task[Any] | None = None
        self.pending: type[BaseException] | None = None

    def interrupt(self, exception: type[BaseException]) -> None:
        """Throw ``exception`` into the coroutine at its next resumption (call on the loop)."""
        if self.task is None or self.task.done() or self.pending is not None:
            return
        self.pending = exception
        self.task.cancel()

    def __await__(self) -> Generator[Any, None, Any]:
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            try:
                yielded = self.coro.send(to_send) if to_throw is None else self.coro.throw(to_throw)
            except StopIteration as stop:
                return stop.value
            to_send, to_throw = None, None
            try:
                to_send = yield yielded
            except asyncio.CancelledError as cancel:
                to_throw = cancel
                if self.pending is not None and self.task is not None:
                    to_throw, self.pending = self.pending(), None
                    self.task.uncancel()
            except BaseException as error:  # whatever the task throws in goes on to the coroutine
                to_throw = error
