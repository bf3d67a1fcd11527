"""Metrics: the Prometheus metrics of docs/design.md, correct under the ``dramatiq`` command.

Families (prefix ``fairway_``): ``messages_total{queue,actor,outcome}`` (outcome ``success``,
``retried``, ``dead_lettered``, ``skipped``, ``delayed_by_breaker``),
``message_duration_seconds{queue,actor}``, ``message_wait_seconds{queue,priority_level}``
(enqueue, or eta for a delayed message, to start), ``retries_total{queue,actor,classification}``,
``dead_letters_total{queue,actor,error_type}``, ``breaker_state{key}`` (0 closed, 1 half-open,
2 open), ``breaker_transitions_total{key,to}``, ``queue_depth{queue,priority_level}``,
``in_flight{queue}``, ``tenant_served_total{queue,tenant}``.

Each processed message is counted once in ``messages_total``, when its attempt ended and the
retry middleware decided its fate; a retry is counted when a run fails, never when the message
moves out of the delay queue. ``breaker_*`` and ``delayed_by_breaker`` are reported by the
circuit breaker through :meth:`Metrics.breaker_changed` and :meth:`Metrics.message_held`
(find the instance with :func:`find_metrics`).

Under the ``dramatiq`` command (worker processes forked or spawned by its master), metrics use
prometheus_client's multiprocess mode in a directory per run of the command
(``$PROMETHEUS_MULTIPROC_DIR`` or the temp dir, then ``fairway-metrics-<uid>/run-<master pid>-<master
start>``), so samples of every process add up and a new run starts from zero. The exporter is a
process the master starts through :attr:`Metrics.forks` (the master never imports user code);
when it starts it deletes the directories of runs whose master is gone (its own run's directory
is new, and the master starts forks only after the workers booted, so wiping it then would lose
their first samples), and at each scrape it drops the live gauges of worker processes that
exited. It serves ``/metrics`` on ``FAIRWAY_METRICS__HOST:PORT``. Multiprocess mode needs
``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported: this module sets it on
import, and repairs prometheus_client if something imported it earlier. Anywhere else (an
in-process ``Worker``, a producer) the metrics live in :attr:`Metrics.registry`, for the
embedding application to expose.

Tenant labels are capped at ``FAIRWAY_METRICS__MAX_TENANTS`` distinct values per process; the
rest are summed as ``other``. Queue depth is sampled every :data:`DEPTH_INTERVAL` seconds by each
worker process from counters the broker keeps (``ready_by_level`` of ``FairRedisBroker``, the
ready count of a passive declare on RabbitMQ, ``LLEN`` on a stock Redis broker), never by
scanning a queue; without a per-level count the level label is ``all``.

A job's own samples (in flight, wait, duration, tenant served, outcome) are queued and written in
batches (``_PendingSamples``): the exporter sees a job up to :data:`FLUSH_INTERVAL` seconds after it
ended; an in-process scrape of :attr:`Metrics.registry` writes what is queued first.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika
from dramatiq import Broker, Message, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import current_millis, q_name
from dramatiq.errors import ActorNotFound
from dramatiq.logging import get_logger
from dramatiq.middleware import Shutdown

from ..classify import qualified_name
from ..embedded import pid_alive
from ..errors import Cancelled
from ..priority import Priority, level_of
from ..settings import Settings, load_settings
from ..tenants import tenant_of
from .limits import drain_throttled, tenant_in_flight

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEPTH_INTERVAL = 5.0
# Seconds between two writes of the per-job samples (a scrape sees a job this much later at most).
FLUSH_INTERVAL = 1.0
MAX_PENDING = 20_000
OTHER_TENANT = "other"
ALL_LEVELS = "all"
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
SECOND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
WAIT_BUCKETS = (*SECOND_BUCKETS, 7200, 21600, 86400)


def _dramatiq_run_dir() -> Path | None:
    """This run's multiprocess directory when running in a process of the ``dramatiq`` command."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    under_dramatiq = program.name.startswith("dramatiq") or program.parent.name == "dramatiq"
    if multiprocessing.parent_process() is None or not under_dramatiq:
        return None
    base = Path(os.environ.get(MULTIPROC_ENV) or tempfile.gettempdir()) / f"fairway-metrics-{os.getuid()}"
    return base / _run_name(os.getppid())


def _run_name(pid: int) -> str:
    return f"run-{pid}-{_start_time(pid)}"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (tells a reused pid from the original)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


RUN_DIR = _dramatiq_run_dir()
if RUN_DIR is not None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(RUN_DIR)


class Metrics(Middleware):
    """Counts outcomes, durations, waits, retries, dead letters, in-flight jobs and served tenants."""

    def __init__(self, *, settings: Settings | None = None) -> None:
        self.logger = get_logger(__name__, type(self))
        self.settings = settings or load_settings()
        self.multiprocess = RUN_DIR is not None
        self.registry = _new_registry(multiprocess=self.multiprocess)
        self._pending = _PendingSamples()
        # First in the registry: an in-process scrape writes what is pending before it reads.
        self.registry.register(self._pending)
        self._families = _Families(self.registry, multiprocess=self.multiprocess)
        self._started: dict[str, float] = {}
        self._tenants: set[str] = set()
        self._tenants_lock = threading.Lock()
        self._sampler: _DepthSampler | None = None

    @property
    def forks(self) -> list[Any]:
        return [serve_metrics] if self.multiprocess else []

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        if self._sampler is None or not self._sampler.is_alive():
            self._sampler = _DepthSampler(broker, self._families, self.logger, self._tenant_name)
            self._sampler.start()
        self._pending.start_flushing()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        if self._sampler is not None:
            self._sampler.stopping.set()
            self._sampler = None

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._pending.stop_flushing()
        if RUN_DIR is not None:
            _leave_run(RUN_DIR)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        now = current_millis()
        self._started[message.message_id] = time.perf_counter()
        queue = q_name(message.queue_name)
        options = message.options
        families, pending = self._families, self._pending
        pending.add(families.in_flight(queue), 1)
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
        queue, actor = q_name(message.queue_name), message.actor_name
        self._pending.observe(self._families.duration(queue, actor), time.perf_counter() - started)
        if message.failed:
            self._dead_lettered(message, exception)
        elif exception is None:
            self._count(message, "success")
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

    def _finish(self, message: MessageProxy) -> float | None:
        started = self._started.pop(message.message_id, None)
        if started is not None:
            self._pending.add(self._families.in_flight(q_name(message.queue_name)), -1)
        return started

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


def serve_metrics() -> None:
    """The exporter process (started by the ``dramatiq`` master through ``Metrics.forks``)."""
    from prometheus_client import CollectorRegistry, start_http_server

    if RUN_DIR is None:
        raise RuntimeError("serve_metrics runs only as a process of the dramatiq command")
    settings = load_settings()
    _remove_stale_runs(RUN_DIR)
    registry = CollectorRegistry()
    registry.register(_LiveMultiProcessCollector(RUN_DIR))
    where = f"{settings.metrics.host}:{settings.metrics.port}"
    try:
        server, thread = start_http_server(settings.metrics.port, settings.metrics.host, registry)
    except OSError as error:
        _report_exporter(f"unavailable: cannot listen on {where} (FAIRWAY_METRICS__PORT={settings.metrics.port})")
        # Typically a second worker on this host: its jobs must go on, the operator must learn why
        # it has no metrics. Returning ends this fork only (the master waits on its workers alone).
        get_logger(__name__).warning(
            "Metrics not served: cannot listen on %s:%d (FAIRWAY_METRICS__PORT=%d): %s; this worker runs "
            "without a metrics endpoint (give each worker on a host its own FAIRWAY_METRICS__PORT)",
            settings.metrics.host,
            settings.metrics.port,
            settings.metrics.port,
            error.strerror or error,
        )
        return
    get_logger(__name__).info("Serving metrics on http://%s:%d/metrics", settings.metrics.host, server.server_port)
    _report_exporter(f"http://{settings.metrics.host}:{server.server_port}/metrics")
    thread.join()


# In the run's directory: where the run's exporter serves, or why it does not, so that each worker
# process can say it in its heartbeat (``fairway workers``, the dashboard).
_EXPORTER_FILE = "exporter"


def _report_exporter(status: str) -> None:
    assert RUN_DIR is not None
    (RUN_DIR / _EXPORTER_FILE).write_text(status)


def exporter_status() -> str | None:
    """This ``dramatiq`` run's metrics URL, ``unavailable: <why>``, or None (no run, or no exporter yet)."""
    if RUN_DIR is None:
        return None
    try:
        return (RUN_DIR / _EXPORTER_FILE).read_text() or None
    except OSError:
        return None


def _leave_run(run_dir: Path) -> None:
    """Delete this worker process's sample files, and the run's directory once no process has any left.

    The ``dramatiq`` command stops all its processes when one stops, so a worker shutting down means
    the run is ending and nobody will scrape its samples again. The exporter cannot do this: the
    workers still write while they finish their jobs, and it may be stopped before it ever ran.
    """
    for file in run_dir.glob(f"*_{os.getpid()}.db"):
        file.unlink(missing_ok=True)
    if not any(run_dir.glob("*.db")):
        (run_dir / _EXPORTER_FILE).unlink(missing_ok=True)
    for directory in (run_dir, run_dir.parent):
        with contextlib.suppress(OSError):  # not empty: another process of this run (or another run) is still there
            directory.rmdir()


def _remove_stale_runs(run_dir: Path) -> None:
    for other in run_dir.parent.glob("run-*"):
        pid = int(other.name.split("-")[1]) if other.name.split("-")[1].isdigit() else 0
        if other != run_dir and (not pid_alive(pid) or _run_name(pid) != other.name):
            shutil.rmtree(other, ignore_errors=True)


class _LiveMultiProcessCollector:
    """prometheus_client's MultiProcessCollector, first dropping live gauges of exited processes."""

    def __init__(self, path: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = path
        self.collector = MultiProcessCollector(None, path=str(path))

    def collect(self) -> Iterable[Any]:
        from prometheus_client import multiprocess

        for file in self.path.glob("gauge_live*_*.db"):
            pid = file.stem.rsplit("_", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                multiprocess.mark_process_dead(int(pid), str(self.path))
        families: Iterable[Any] = self.collector.collect()
        return families


def _new_registry(*, multiprocess: bool) -> CollectorRegistry:
    from prometheus_client import CollectorRegistry, values

    if multiprocess and values.ValueClass.__name__ != "MmapedValue":
        # prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; it picks the
        # value class once, at import, and would export zero metrics from this process.
        values.ValueClass = values.MultiProcessValue()
    return CollectorRegistry(auto_describe=True)


class _Families:
    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, doc: str, labels: Iterable[str]) -> Counter:
            return Counter(f"fairway_{name}", doc, list(labels), registry=registry)

        self.messages = _Labelled(counter("messages", "Messages handled, by outcome.", ("queue", "actor", "outcome")))
        self.retries = counter("retries", "Failed runs that will run again.", ("queue", "actor", "classification"))
        self.dead_letters = counter("dead_letters", "Messages dead-lettered.", ("queue", "actor", "error_type"))
        self.breaker_transitions = counter("breaker_transitions", "Breaker state changes.", ("key", "to"))
        self.tenant_served = _Labelled(counter("tenant_served", "Jobs started per tenant.", ("queue", "tenant")))
        self.tenant_throttled = counter(
            "tenant_throttled", "Times a tenant was held back by its limits.", ("queue", "tenant", "reason")
        )
        self.duration = _Labelled(
            Histogram(
                "fairway_message_duration_seconds",
                "Time spent running a message.",
                ["queue", "actor"],
                buckets=SECOND_BUCKETS,
                registry=registry,
            )
        )
        self.wait = _Labelled(
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
        self.in_flight = _Labelled(
            Gauge(
                "fairway_in_flight", "Messages running now.", ["queue"], registry=registry, multiprocess_mode="livesum"
            )
        )


class _Labelled:
    """A metric's labelled children, kept: ``labels()`` validates and locks on every call, per job."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


class _PendingSamples:
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


class _DepthSampler(threading.Thread):
    """Samples the depth of the worker's queues from the broker's counters, never by scanning."""

    def __init__(self, broker: Broker, families: _Families, logger: Any, tenant_label: Callable[[str], str]) -> None:
        super().__init__(name="fairway-queue-depth", daemon=True)
        self.broker = broker
        self.families = families
        self.logger = logger
        self.tenant_label = tenant_label
        self.stopping = threading.Event()
        self._in_flight_labels: set[tuple[str, str]] = set()

    def run(self) -> None:
        last_error = ""
        while not self.stopping.is_set():
            try:
                for queue in self._queues():
                    for level, depth in queue_depth_by_level(self.broker, queue):
                        self.families.queue_depth.labels(queue, level).set(depth)
                self._sample_limits()
                last_error = ""
            except Exception as error:
                # One warning per distinct error, not one every few seconds while it lasts.
                if str(error) != last_error:
                    self.logger.warning("Could not sample queue depth: %s", error)
                last_error = str(error)
            self.stopping.wait(DEPTH_INTERVAL)

    def _queues(self) -> Iterator[str]:
        return (name for name in sorted(self.broker.get_declared_queues()) if name == q_name(name))

    def _sample_limits(self) -> None:
        """Tenant throttles since the last sample, and each tenant's jobs counted against its cap."""
        for (queue, tenant, reason), count in drain_throttled(self.broker).items():
            self.families.tenant_throttled.labels(queue, self.tenant_label(tenant), reason).inc(count)
        in_flight: collections.Counter[tuple[str, str]] = collections.Counter()
        for queue in self._queues():
            for tenant, count in tenant_in_flight(self.broker, queue).items():
                in_flight[(queue, self.tenant_label(tenant))] += count
        # A tenant with nothing in flight is no longer listed: report its 0 once.
        for labels in self._in_flight_labels | set(in_flight):
            self.families.tenant_in_flight.labels(*labels).set(in_flight[labels])
        self._in_flight_labels = set(in_flight)


def queue_depth_by_level(broker: Any, queue: str) -> Iterable[tuple[str, int]]:
    """(level name, ready messages) of ``queue`` from the broker's counters; level ``all`` without them."""
    if callable(getattr(broker, "ready_by_level", None)):
        ready = broker.ready_by_level(queue)
        return [(level.name, int(ready.get(level, 0))) for level in Priority]
    if isinstance(broker, RabbitmqBroker):
        return [(ALL_LEVELS, _rabbitmq_ready(broker, queue))]
    client = getattr(broker, "client", None)
    if client is not None:
        return [(ALL_LEVELS, int(client.llen(f"{broker.namespace}:{queue}")))]
    return []


def _rabbitmq_ready(broker: RabbitmqBroker, queue: str) -> int:
    # Passive: a sample must never re-create a queue an operator deleted. A refused declare closes
    # the channel, so this thread gets a new one next time.
    try:
        return int(broker.channel.queue_declare(queue=queue, passive=True).method.message_count)
    except pika.exceptions.AMQPError:
        del broker.channel
        raise


def _level(options: dict[str, Any]) -> str:
    try:
        return level_of(options).name
    except ValueError:
        return "UNKNOWN"
