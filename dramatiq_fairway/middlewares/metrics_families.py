"""The metric families of ``Metrics`` and the batch writer of each job's samples.

Families (prefix ``fairway_``): ``messages_total{queue,actor,outcome}`` (outcome ``success``,
``retried``, ``dead_lettered``, ``skipped``, ``delayed_by_breaker``),
``message_duration_seconds{queue,actor}``, ``message_wait_seconds{queue,priority_level}``
(enqueue, or eta for a delayed message, to start), ``retries_total{queue,actor,classification}``,
``dead_letters_total{queue,actor,error_type}``, ``breaker_state{key}`` (0 closed, 1 half-open,
2 open), ``breaker_transitions_total{key,to}``, ``queue_depth{queue,priority_level}``,
``in_flight{queue}``, ``tenant_served_total{queue,tenant}``, ``worker_recycled_total{reason}``.

A job's own samples (in flight, wait, duration, tenant served, outcome) are queued and written in
batches (:class:`PendingSamples`): the exporter sees a job up to :data:`FLUSH_INTERVAL` seconds after
it ended; an in-process scrape of ``Metrics.registry`` writes what is queued first.

prometheus_client is imported only when a family is built: ``middlewares/metrics_exporter.py``
must set ``PROMETHEUS_MULTIPROC_DIR`` first.
"""

from __future__ import annotations

import bisect
import collections
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dramatiq.logging import get_logger

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# Seconds between two writes of the per-job samples (a scrape sees a job this much later at most).
FLUSH_INTERVAL = 1.0
MAX_PENDING = 20_000
SECOND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
WAIT_BUCKETS = (*SECOND_BUCKETS, 7200, 21600, 86400)


class Families:
    """Every family of the ``fairway_`` metrics, registered in one registry."""

    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, doc: str, labels: Iterable[str]) -> Counter:
            return Counter(f"fairway_{name}", doc, list(labels), registry=registry)

        self.messages = Labelled(counter("messages", "Messages handled, by outcome.", ("queue", "actor", "outcome")))
        self.retries = counter("retries", "Failed runs that will run again.", ("queue", "actor", "classification"))
        self.dead_letters = counter("dead_letters", "Messages dead-lettered.", ("queue", "actor", "error_type"))
        self.breaker_transitions = counter("breaker_transitions", "Breaker state changes.", ("key", "to"))
        self.worker_recycled = counter(
            "worker_recycled", "Worker processes replaced at a limit (max_tasks, max_memory).", ("reason",)
        )
        self.tenant_served = Labelled(counter("tenant_served", "Jobs started per tenant.", ("queue", "tenant")))
        self.tenant_throttled = counter(
            "tenant_throttled", "Times a tenant was held back by its limits.", ("queue", "tenant", "reason")
        )
        self.duration = Labelled(
            Histogram(
                "fairway_message_duration_seconds",
                "Time spent running a message.",
                ["queue", "actor"],
                buckets=SECOND_BUCKETS,
                registry=registry,
            )
        )
        self.wait = Labelled(
            Histogram(
                "fairway_message_wait_seconds",
                "Time from enqueue (or eta) to start.",
                ["queue", "priority_level"],
                buckets=WAIT_BUCKETS,
                registry=registry,
            )
        )
        gauge_mode: Any = "mostrecent" if multiprocess else "all"
        self.breaker_state = Gauge(
            "fairway_breaker_state",
            "Breaker state: 0 closed, 1 half-open, 2 open.",
            ["key"],
            registry=registry,
            multiprocess_mode=gauge_mode,
        )
        self.queue_depth = Gauge(
            "fairway_queue_depth",
            "Messages ready in a queue.",
            ["queue", "priority_level"],
            registry=registry,
            multiprocess_mode=gauge_mode,
        )
        self.tenant_in_flight = Gauge(
            "fairway_tenant_in_flight",
            "Jobs of a tenant counted against its concurrency cap.",
            ["queue", "tenant"],
            registry=registry,
            multiprocess_mode=gauge_mode,
        )
        self.in_flight = Labelled(
            Gauge(
                "fairway_in_flight", "Messages running now.", ["queue"], registry=registry, multiprocess_mode="livesum"
            )
        )


class Labelled:
    """A metric's labelled children, kept: ``labels()`` validates and locks on every call, per job."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


class PendingSamples:
    """This process's per-job samples, written to prometheus_client in batches.

    In multiprocess mode each increment takes prometheus_client's process-wide lock and writes
    an mmap'ed file; a job makes eight (in flight up and down, wait and duration with their sums,
    tenant, outcome), about a tenth of a no-op job's CPU (bench/hotpath.py). Queued here a sample is a deque
    append; a flush, every :data:`FLUSH_INTERVAL` seconds, at worker shutdown, before an
    in-process scrape (this is a collector of the registry that yields nothing) or when
    :data:`MAX_PENDING` wait, writes each labelled child once. Histograms go first, so a scrape
    never sees a job's outcome counted without its duration.
    """

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[Any, float, bool]] = collections.deque()
        self._flushing = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, child: Any, amount: float) -> None:
        """``child.inc(amount)``, later (a gauge's ``dec`` is a negative amount)."""
        self._queue.append((child, amount, False))
        if len(self._queue) >= MAX_PENDING:
            self.flush()

    def observe(self, child: Any, value: float) -> None:
        """``child.observe(value)``, later."""
        self._queue.append((child, value, True))
        if len(self._queue) >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        added: dict[Any, float] = collections.defaultdict(float)
        observed: dict[Any, list[float]] = collections.defaultdict(list)
        with self._flushing:
            # popleft, not a swap of lists: an append racing with the flush is never lost.
            while self._queue:
                child, value, is_observation = self._queue.popleft()
                if is_observation:
                    observed[child].append(value)
                else:
                    added[child] += value
            for child, values in observed.items():
                _observe_all(child, values)
            for child, amount in added.items():
                if amount:
                    child.inc(amount)

    def collect(self) -> list[Any]:
        self.flush()
        return []

    def start_flushing(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="fairway-metrics-flush", daemon=True)
            self._thread.start()

    def stop_flushing(self) -> None:
        self._stopping.set()
        self.flush()

    def _run(self) -> None:
        while not self._stopping.wait(FLUSH_INTERVAL):
            try:
                self.flush()
            except Exception:  # a bug here must not silently stop the metrics of the whole process
                get_logger(__name__).exception("Unhandled error while writing metrics.")


def _observe_all(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for each value, as one increment per bucket and one of the sum.

    Uses the child's ``_upper_bounds``, ``_buckets`` and ``_sum`` (what ``observe`` itself
    updates); without them (another prometheus_client) it observes one value at a time.
    """
    bounds, buckets, total = (getattr(histogram, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    total.inc(sum(values))
    for index, count in collections.Counter(bisect.bisect_left(bounds, value) for value in values).items():
        buckets[index].inc(count)
