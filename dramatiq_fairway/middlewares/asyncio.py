"""ContextAsyncIO: Dramatiq's AsyncIO middleware, with each coroutine run in its worker thread's context.

Dramatiq's event loop thread starts every coroutine in the loop thread's own context, so what a
middleware puts in a context variable for the job (the job ``progress()`` reports to, the fields
of JSON log lines) would not reach an ``async def`` actor. Here the coroutine first takes over
the values of the worker thread that waits for it. The loop thread is a daemon thread.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable
from typing import Any, TypeVar

from dramatiq import Broker
from dramatiq.asyncio import EventLoopThread, set_event_loop_thread
from dramatiq.middleware import AsyncIO

R = TypeVar("R")


class ContextAsyncIO(AsyncIO):
    """Runs ``async def`` actors like Dramatiq's ``AsyncIO``, in the calling worker thread's context."""

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:  # noqa: ARG002 (hook signature)
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
        context = contextvars.copy_context()

        async def in_callers_context() -> R:
            for variable, value in context.items():
                variable.set(value)
            return await coro

        return super().run_coroutine(in_callers_context())
