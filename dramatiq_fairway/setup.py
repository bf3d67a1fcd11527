"""``setup()`` and ``install()``: a broker with the fairway middleware stack.

The stack, in the order ``install()`` places it among Dramatiq's defaults (``emit_before`` runs
in list order, ``emit_after`` in reverse, so what must see a final outcome sits *before* the
middleware that decides it):

    AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines   (Dramatiq's, kept)
    FairPriority      validates priority_level / tenant at enqueue        (fairness issue)
    Metrics           counts outcomes after retries decided               (metrics issue)
    JobStatus         records states, progress, cancel                    (metrics issue)
    DeadLetters       records every failed message in before_nack         (dead-letter issue)
    CircuitBreaker    holds back jobs of an open dependency               (breaker issue)
    ClassifiedRetries replaces Dramatiq's Retries, never beside it        (retries issue)
    AsyncIO           runs ``async def`` actors

Each fairway middleware joins this list as its issue lands; ``FAIRWAY_MIDDLEWARE_ORDER`` below is
the single place the order is written down.
"""

from __future__ import annotations

from collections.abc import Iterable

import dramatiq
from dramatiq import Broker, Middleware
from dramatiq.middleware import AsyncIO

from .brokers import build_broker
from .settings import Settings, load_settings

FAIRWAY_MIDDLEWARE_ORDER: tuple[type[Middleware], ...] = (AsyncIO,)


def setup(settings: Settings | None = None, *, middleware: Iterable[Middleware] = ()) -> Broker:
    """Build the broker chosen by the settings, install the fairway stack, make it the global broker.

    ``middleware`` is added after the fairway stack (for example ``Results``).
    """
    settings = settings or load_settings()
    broker = build_broker(settings)
    install(broker, settings)
    for extra in middleware:
        broker.add_middleware(extra)
    dramatiq.set_broker(broker)
    return broker


def install(broker: Broker, settings: Settings | None = None) -> Broker:  # noqa: ARG001
    """Add the fairway stack to a broker built elsewhere (django_dramatiq, an existing RedisBroker).

    Calling it twice adds nothing the second time.
    """
    present = {type(m) for m in broker.middleware}
    for middleware_class in FAIRWAY_MIDDLEWARE_ORDER:
        if middleware_class not in present:
            broker.add_middleware(middleware_class())
    return broker

