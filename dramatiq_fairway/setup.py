"""``setup()`` and ``install()``: a broker with the fairway middleware stack.

The stack, in the order ``install()`` places it among Dramatiq's defaults (``emit_before`` runs
in list order, ``emit_after`` in reverse, so what must see a final outcome sits *before* the
middleware that decides it):

    AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines   (Dramatiq's, kept)
    JobLogContext     the job's fields for log lines; JSON logs           (metrics issue)
    FairPriority      validates priority_level / tenant at enqueue        (fairness issue)
    Metrics           counts outcomes after retries decided               (metrics issue)
    WorkerHeartbeats  reports the worker process for ``fairway workers``  (metrics issue)
    JobStatus         records states, progress, cancel, unique_key        (metrics issue)
    QueuePause        holds back messages of a paused queue (RabbitMQ)    (metrics issue)
    TenantLimiter     holds back jobs of tenants over their limits (RabbitMQ) (limits issue)
    DeadLetters       records every failed message in before_nack         (dead-letter issue)
    ClassifiedRetries replaces Dramatiq's Retries, never beside it        (retries issue)
    CircuitBreaker    holds back jobs of an open dependency; after the    (breaker issue)
                      retries so that it reports an outcome before the retry is re-enqueued
    MessageSize       refuses non-JSON and oversized messages at enqueue  (proof issue)
    ContextAsyncIO    runs ``async def`` actors (Dramatiq's AsyncIO, keeping the job's context)

With ``FAIRWAY_WORKERS__MAX_TASKS`` or ``__MAX_MEMORY_MB``, ``WorkerRecycling`` goes last of all
(middlewares/recycling.py says why).

With ``FAIRWAY_ENCRYPTION__KEYS`` the ``Encryption`` middleware goes first of the fairway stack; it
has no hook, it installs the encoder that seals args and kwargs (docs/encryption.md).

With ``FAIRWAY_TRACING__ENABLED`` the ``Tracing`` middleware goes first of all, before Dramatiq's
own, so that its span covers every other hook and ends after Retries and Pipelines decided.

``FAIRWAY_MIDDLEWARE_ORDER`` below is the single place the order is written down.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterable

import dramatiq
from dramatiq import Broker, Middleware
from dramatiq.middleware import AsyncIO, Retries

from .brokers import build_broker
from .errors import ConfigError
from .middlewares.asyncio import ContextAsyncIO
from .middlewares.breaker import CircuitBreaker
from .middlewares.dead_letters import DeadLetters
from .middlewares.encryption import Encryption
from .middlewares.fairness import FairPriority
from .middlewares.limits import TenantLimiter
from .middlewares.logs import JobLogContext
from .middlewares.message_size import MessageSize
from .middlewares.metrics import Metrics
from .middlewares.pause import QueuePause
from .middlewares.recycling import WorkerRecycling
from .middlewares.retries import ClassifiedRetries
from .middlewares.status import JobStatus
from .middlewares.workers import WorkerHeartbeats
from .settings import Settings, load_settings

# The fairway middleware, in stack order. They go where Dramatiq's Retries stood (the last of its
# defaults), which ClassifiedRetries replaces; each is built with the broker's Settings.
FAIRWAY_MIDDLEWARE_ORDER: tuple[type[Middleware], ...] = (
    JobLogContext,
    FairPriority,
    Metrics,
    WorkerHeartbeats,
    JobStatus,
    QueuePause,
    TenantLimiter,
    DeadLetters,
    ClassifiedRetries,
    CircuitBreaker,
    MessageSize,
)


def setup(settings: Settings | None = None, *, middleware: Iterable[Middleware] = ()) -> Broker:
    """Build the broker chosen by the settings, install the fairway stack, make it the global broker.

    ``middleware`` is added after the fairway stack (for example ``Results``).
    """
    settings = settings or _load_settings_or_exit()
    broker = build_broker(settings)
    install(broker, settings)
    for extra in middleware:
        broker.add_middleware(extra)
    dramatiq.set_broker(broker)
    return broker


def _load_settings_or_exit() -> Settings:
    """``load_settings()``; in a worker process of the ``dramatiq`` command, a bad setting ends the
    process with its one line instead of the traceback multiprocessing prints for an exception."""
    try:
        return load_settings()
    except ConfigError as error:
        if multiprocessing.parent_process() is not None and "dramatiq.cli" in sys.modules:
            raise SystemExit(f"dramatiq-fairway: {error}") from None
        raise


def install(broker: Broker, settings: Settings | None = None) -> Broker:
    """Add the fairway stack to a broker built elsewhere (django_dramatiq, an existing RedisBroker).

    The stack takes the place of Dramatiq's ``Retries`` (removed once ClassifiedRetries is in the
    stack, so the two never run together); ``ContextAsyncIO`` is added at the end, in place of
    Dramatiq's ``AsyncIO`` when that is present.
    Calling it twice adds nothing the second time.
    """
    settings = settings or load_settings()
    present = {type(m) for m in broker.middleware}
    anchor = next((m for m in broker.middleware if type(m) is Retries), None)
    for middleware_class in FAIRWAY_MIDDLEWARE_ORDER:
        if middleware_class in present:
            continue
        instance = middleware_class(settings=settings)  # type: ignore[call-arg]
        if anchor is None:
            broker.add_middleware(instance)
        else:
            broker.add_middleware(instance, before=Retries)
    if settings.encryption.enabled and Encryption not in present:
        broker.add_middleware(Encryption(settings), before=FAIRWAY_MIDDLEWARE_ORDER[0])
    if anchor is not None and any(getattr(c, "replaces_retries", False) for c in FAIRWAY_MIDDLEWARE_ORDER):
        broker.middleware.remove(anchor)
    if settings.tracing.enabled and not any(type(m).__name__ == "Tracing" for m in broker.middleware):
        _add_tracing(broker)
    # Dramatiq's own AsyncIO gives way to ContextAsyncIO, which lets progress() and the job's log
    # fields reach async def actors.
    stock = next((m for m in broker.middleware if type(m) is AsyncIO), None)
    if stock is not None:
        broker.middleware[broker.middleware.index(stock)] = ContextAsyncIO()
    elif ContextAsyncIO not in present:
        broker.add_middleware(ContextAsyncIO())
    # Last of all: its after_process_boot (after_ hooks run last middleware first) must fork the
    # worker process before any other middleware starts a thread (Dramatiq's TimeLimit does).
    if settings.workers.recycles and WorkerRecycling not in present:
        broker.add_middleware(WorkerRecycling(settings=settings))
    return broker


def _add_tracing(broker: Broker) -> None:
    try:
        from .middlewares.tracing import Tracing
    except ImportError as error:
        raise ConfigError(
            f"FAIRWAY_TRACING__ENABLED=true needs the extra 'tracing' (pip install dramatiq-fairway[tracing]): {error}"
        ) from None
    first = type(broker.middleware[0]) if broker.middleware else None
    broker.add_middleware(Tracing(), **({"before": first} if first else {}))
