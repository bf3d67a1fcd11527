"""TenantLimiter: per-tenant concurrency caps and rate limits on the consumer side (docs/limits.md).

For brokers whose dispatch cannot enforce limits (RabbitMQ). When fairway's consumer takes a
message of a limited tenant, :meth:`hold` takes a slot (a lease named by the message id) and a
token in the state store in one script call (``store/limits.lua``). A tenant at its cap or out of
tokens gets its message held back: re-published to the delay queue with a short delay, firing no
hook, so no retry is used and nothing is dead-lettered (``brokers/delivery.py``). The slot is
given back when the job ends (``after_process_message``, ``after_skip_message``, ``after_nack``).
Leases of running jobs are renewed every :data:`RENEW_SECONDS` from a thread; a killed worker
stops renewing, so its slots come back within ``LEASE_MS`` (30 s).

A message that took a slot and was then held back by another middleware (an open breaker, a
paused queue) keeps its slot while it waits (up to ``LEASE_MS`` at a time): it comes back with the
same message id and reuses it. The lease is taken when the consumer reads the message, so a job
waiting in the process's prefetch buffer counts as running.

Cost: a message of a tenant without limits costs nothing (limits are read once per second per
queue); a limited one costs one script call at fetch and one at the end; a held message costs a
re-publish to the delay queue and a return trip after :data:`CAP_RECHECK_MS` (cap) or once its
token is due (rate); Dramatiq's delay-queue consumer adds up to a worker timeout (1 s) to each.
When the state store is down, limits are not enforced, with one warning per minute
(docs/design.md, "When the state store is down").

On ``FairRedisBroker`` this middleware does nothing: the dispatch script enforces the limits.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any, Protocol, TypeGuard, runtime_checkable

import redis
from dramatiq import Broker, Message, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.common import q_name
from dramatiq.logging import get_logger

from ..outage import OutageWarning
from ..priority import Priority, level_of
from ..settings import Settings, load_settings
from ..store.limits import LEASE_MS, TenantLimits
from ..tenants import tenant_of

# A message of a tenant at its cap looks again after this long, spread by up to half of it. Longer
# holds (tried: doubling per refusal up to 4 s) re-publish less but leave freed slots idle: the
# cap scenario of bench/limits.py took 70 s instead of 40 s.
CAP_RECHECK_MS = 500
# A message out of tokens waits for its token plus up to this much, so held messages spread out.
RATE_SPREAD_MS = 1000
CACHE_SECONDS = 1.0
RENEW_SECONDS = LEASE_MS / 3000
REASONS = {"c": "concurrency", "r": "rate"}


@runtime_checkable
class DispatchLimitedBroker(Protocol):
    """A broker that enforces tenant limits in its own dispatch (``FairRedisBroker``)."""

    tenant_limits: TenantLimits

    def drain_throttled(self) -> dict[tuple[str, str, str], int]: ...


def _enforced_by_broker(broker: object) -> TypeGuard[DispatchLimitedBroker]:
    # Per message (``hold``): hasattr costs far less than a runtime Protocol check.
    return hasattr(broker, "tenant_limits") and hasattr(broker, "drain_throttled")


class TenantLimiter(Middleware):
    """Holds back messages of tenants over their limits (brokers without limits at dispatch)."""

    def __init__(self, *, settings: Settings | None = None, store: TenantLimits | None = None) -> None:
        self.logger = get_logger(__name__, type(self))
        self.settings = settings or load_settings()
        self._store = store
        self._lock = threading.Lock()
        self._tenants: dict[str, tuple[float, set[str], bool]] = {}
        self._installed: set[str] = set()
        self._leases: dict[str, tuple[str, str]] = {}
        self._running: set[str] = set()
        self._throttled: Counter[tuple[str, str, str]] = Counter()
        self._outage = OutageWarning(self.logger)
        self._renewer: _Renewer | None = None

    @property
    def store(self) -> TenantLimits:
        if self._store is None:
            self._store = TenantLimits.from_settings(self.settings)
        return self._store

    def hold(self, broker: Broker, message: Message[Any]) -> int | None:
        """Ms ``message`` must wait for its tenant's limits, or None (a slot and a token were taken)."""
        if _enforced_by_broker(broker):
            return None
        queue, tenant = q_name(message.queue_name), tenant_of(message.options)
        try:
            if not self._limited(queue, tenant):
                return None
            if self.settings.limits.exempt_critical and _level(message) is Priority.CRITICAL:
                return None
            reason, wait = self.store.acquire(queue, tenant, message.message_id)
        except redis.RedisError as error:
            self._warn(error)
            return None
        if not reason:
            with self._lock:
                self._leases[message.message_id] = (queue, tenant)
            self._start_renewer()
            return None
        with self._lock:
            self._throttled[(queue, tenant, REASONS[reason])] += 1
        if reason == "c":
            return CAP_RECHECK_MS + random.randrange(CAP_RECHECK_MS // 2)
        return wait + random.randrange(RATE_SPREAD_MS)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        with self._lock:
            if message.message_id in self._leases:
                self._running.add(message.message_id)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self._release(message.message_id)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._release(message.message_id)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self._release(message.message_id)

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        if self._renewer is not None:
            self._renewer.stopped.set()
            self._renewer = None
        with self._lock:
            held = list(self._leases)
        for message_id in held:
            self._release(message_id)

    def drain_throttled(self) -> dict[tuple[str, str, str], int]:
        """Messages held back per (queue, tenant, reason) since the last drain (for metrics)."""
        with self._lock:
            counts = dict(self._throttled)
            self._throttled.clear()
        return counts

    def renew(self) -> None:
        """Extend the leases of the jobs of this process that are running."""
        by_queue: dict[str, list[tuple[str, str]]] = {}
        with self._lock:
            for message_id in self._running:
                queue, tenant = self._leases[message_id]
                by_queue.setdefault(queue, []).append((tenant, message_id))
        for queue, leases in by_queue.items():
            self.store.renew(queue, leases)

    def _limited(self, queue: str, tenant: str) -> bool:
        with self._lock:
            read_at, tenants, has_default = self._tenants.get(queue, (float("-inf"), set(), False))
            fresh = time.monotonic() - read_at < CACHE_SECONDS
        if not fresh:
            if queue not in self._installed:
                self.store.install(queue, self.settings.limits)
                self._installed.add(queue)
            tenants, has_default = self.store.limited_tenants(queue)
            with self._lock:
                self._tenants[queue] = (time.monotonic(), tenants, has_default)
        return has_default or tenant in tenants

    def _release(self, message_id: str) -> None:
        with self._lock:
            lease = self._leases.pop(message_id, None)
            self._running.discard(message_id)
        if lease is None:
            return
        queue, tenant = lease
        try:
            self.store.release(queue, tenant, message_id)
        except redis.RedisError as error:
            self._warn(error)

    def _start_renewer(self) -> None:
        with self._lock:
            if self._renewer is None:
                self._renewer = _Renewer(self)
                self._renewer.start()

    def _warn(self, error: Exception) -> None:
        self._outage.warn("Tenant limits not enforced, the state store failed: %s", error)


class _Renewer(threading.Thread):
    def __init__(self, limiter: TenantLimiter) -> None:
        super().__init__(name="fairway-limit-leases", daemon=True)
        self.limiter = limiter
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(RENEW_SECONDS):
            try:
                self.limiter.renew()
            except redis.RedisError as error:
                self.limiter._warn(error)


def _level(message: Message[Any]) -> Priority | None:
    try:
        return level_of(message.options)
    except ValueError:
        return None


def drain_throttled(broker: Broker) -> dict[tuple[str, str, str], int]:
    """Times each (queue, tenant, reason) was held back for a limit since the last call, in this
    process, by the broker's dispatch or by the TenantLimiter; reason ``concurrency`` or ``rate``."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for source in (broker, *broker.middleware):
        if isinstance(source, (TenantLimiter, DispatchLimitedBroker)):
            counts.update(source.drain_throttled())
    return dict(counts)


def tenant_in_flight(broker: Broker, queue_name: str) -> dict[str, int]:
    """Jobs of each tenant counted against its cap on ``queue_name`` (empty without limits)."""
    if _enforced_by_broker(broker):
        return broker.tenant_limits.in_flight(queue_name)
    limiter = next((m for m in broker.middleware if isinstance(m, TenantLimiter)), None)
    return limiter.store.in_flight(queue_name) if limiter is not None else {}
