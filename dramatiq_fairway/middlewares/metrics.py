"""Metrics: the middleware that counts each job into the Prometheus metrics of docs/design.md.

Each processed message is counted once in ``messages_total``, when its attempt ended and the
retry middleware decided its fate; a retry is counted when a run fails, never when the message
moves out of the delay queue. ``breaker_*`` and ``delayed_by_breaker`` are reported by the
circuit breaker through :meth:`Metrics.breaker_changed` and :meth:`Metrics.message_held`
(find the instance with :func:`find_metrics`).

Under the ``dramatiq`` command the samples of every process add up in a directory per run, served
by the exporter process this middleware names in :attr:`Metrics.forks`
(``middlewares/metrics_exporter.py``). Anywhere else (an in-process ``Worker``, a producer) the
metrics live in :attr:`Metrics.registry`, for the embedding application to expose.

Tenant labels are capped at ``FAIRWAY_METRICS__MAX_TENANTS`` distinct values per process; the
rest are summed as ``other``. The families and the batching of each job's samples are in
``middlewares/metrics_families.py``; the queue-depth sampler in ``middlewares/queue_depth.py``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dramatiq import Broker, Message, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.common import current_millis, q_name
from dramatiq.errors import ActorNotFound
from dramatiq.logging import get_logger
from dramatiq.middleware import Shutdown

from ..errors import Cancelled
from ..failures.classify import qualified_name
from ..priority import level_of
from ..settings import Settings, load_settings
from ..tenants import tenant_of

# The exporter module first: it sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported.
from .metrics_exporter import RUN_DIR, leave_run, new_registry, serve_metrics
from .metrics_families import Families, PendingSamples
from .queue_depth import DepthSampler, queue_depth_by_level

__all__ = ["Metrics", "find_metrics", "queue_depth_by_level", "serve_metrics"]

OTHER_TENANT = "other"
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics(Middleware):
    """Counts outcomes, durations, waits, retries, dead letters, in-flight jobs and served tenants."""

    def __init__(self, *, settings: Settings | None = None) -> None:
        self.logger = get_logger(__name__, type(self))
        self.settings = settings or load_settings()
        self.multiprocess = RUN_DIR is not None
        self.registry = new_registry(multiprocess=self.multiprocess)
        self._pending = PendingSamples()
        # First in the registry: an in-process scrape writes what is pending before it reads.
        self.registry.register(self._pending)
        self._families = Families(self.registry, multiprocess=self.multiprocess)
        self._started: dict[str, float] = {}
        self._tenants: set[str] = set()
        self._tenants_lock = threading.Lock()
        # Per queue name: (queue label, its in-flight child); per (queue name, actor): (duration
        # child, success child). Looked up once per job instead of q_name() and label lookups per hook.
        self._by_queue: dict[str, tuple[str, Any]] = {}
        self._by_actor: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._sampler: DepthSampler | None = None

    @property
    def forks(self) -> list[Any]:
        return [serve_metrics] if self.multiprocess else []

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        if self._sampler is None or not self._sampler.is_alive():
            self._sampler = DepthSampler(broker, self._families, self.logger, self._tenant_name)
            self._sampler.start()
        self._pending.start_flushing()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        if self._sampler is not None:
            self._sampler.stopping.set()
            self._sampler = None

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._pending.stop_flushing()
        if RUN_DIR is not None:
            leave_run(RUN_DIR)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        now = current_millis()
        self._started[message.message_id] = time.perf_counter()
        queue, in_flight = self._queue_of(message.queue_name)
        options = message.options
        families, pending = self._families, self._pending
        pending.add(in_flight, 1)
        since = max(int(message.message_timestamp), int(options.get("eta", 0)))
        pending.observe(families.wait(queue, _level(options)), max(0, now - since) / 1000)
        pending.add(families.tenant_served(queue, self._tenant_label(options)), 1)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started = self._finish(message)
        if started is None:
            return
        queue, actor = self._queue_of(message.queue_name)[0], message.actor_name
        duration, success = self._actor_children(message.queue_name, actor)
        self._pending.observe(duration, time.perf_counter() - started)
        if message.failed:
            self._dead_lettered(message, exception)
        elif exception is None:
            self._pending.add(success, 1)
        elif isinstance(exception, Cancelled):
            self._count(message, "skipped")
        else:
            self._count(message, "retried")
            if not isinstance(exception, Shutdown):
                classification = str(message.options.get("classification", "unknown"))
                self._families.retries.labels(queue, actor, classification).inc()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._finish(message)
        if message.failed:
            self._dead_lettered(message, None)
        else:
            self._count(message, "skipped")

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        # A message for an unknown actor is failed in the consumer thread: no processing hook saw it.
        try:
            broker.get_actor(message.actor_name)
        except ActorNotFound:
            self._dead_lettered(message, None, error_type="dramatiq.errors.ActorNotFound")

    def message_held(self, message: Message[Any], outcome: str = "delayed_by_breaker") -> None:
        """Count a message held back before a worker saw it (called by the circuit breaker)."""
        self._count(message, outcome)

    def breaker_changed(self, key: str, state: str, previous: str | None = None) -> None:
        """Record a breaker's state (``closed``, ``half_open``, ``open``) and, if it changed, the transition."""
        self._families.breaker_state.labels(key).set(BREAKER_STATES[state])
        if previous is not None and previous != state:
            self.breaker_transition(key, state)

    def breaker_transition(self, key: str, state: str) -> None:
        """Count a breaker's transition to ``state`` without changing its recorded state."""
        self._families.breaker_transitions.labels(key, state).inc()

    def worker_recycled(self, reason: str) -> None:
        """Count this worker process replaced at a limit (called by ``WorkerRecycling``)."""
        self._families.worker_recycled.labels(reason).inc()

    def _finish(self, message: MessageProxy) -> float | None:
        started = self._started.pop(message.message_id, None)
        if started is not None:
            self._pending.add(self._queue_of(message.queue_name)[1], -1)
        return started

    def _queue_of(self, queue_name: str) -> tuple[str, Any]:
        """The queue's label (``q_name``: a delay queue counts as its queue) and its in-flight child."""
        found = self._by_queue.get(queue_name)
        if found is None:
            queue = q_name(queue_name)
            found = self._by_queue[queue_name] = (queue, self._families.in_flight(queue))
        return found

    def _actor_children(self, queue_name: str, actor: str) -> tuple[Any, Any]:
        """The duration histogram child and the ``success`` counter child of an actor on a queue."""
        found = self._by_actor.get((queue_name, actor))
        if found is None:
            queue = q_name(queue_name)
            families = self._families
            found = (families.duration(queue, actor), families.messages(queue, actor, "success"))
            self._by_actor[(queue_name, actor)] = found
        return found

    def _count(self, message: Message[Any] | MessageProxy, outcome: str) -> None:
        self._pending.add(self._families.messages(q_name(message.queue_name), message.actor_name, outcome), 1)

    def _dead_lettered(
        self, message: MessageProxy, exception: BaseException | None, error_type: str | None = None
    ) -> None:
        self._count(message, "dead_lettered")
        error_type = (
            error_type
            or message.options.get("error_type")
            or (qualified_name(type(exception)) if exception else "unknown")
        )
        self._families.dead_letters.labels(q_name(message.queue_name), message.actor_name, error_type).inc()

    def _tenant_label(self, options: dict[str, Any]) -> str:
        return self._tenant_name(tenant_of(options))

    def _tenant_name(self, tenant: str) -> str:
        # A tenant once admitted stays: a set's membership test needs no lock (the GIL) when it hits.
        if tenant in self._tenants:
            return tenant
        with self._tenants_lock:
            if tenant in self._tenants:
                return tenant
            if len(self._tenants) < self.settings.metrics.max_tenants:
                self._tenants.add(tenant)
                return tenant
        return OTHER_TENANT


def find_metrics(broker: Broker) -> Metrics | None:
    """The broker's Metrics middleware, if it has one."""
    return next((m for m in broker.middleware if isinstance(m, Metrics)), None)


def _level(options: dict[str, Any]) -> str:
    try:
        return level_of(options).name
    except ValueError:
        return "UNKNOWN"
