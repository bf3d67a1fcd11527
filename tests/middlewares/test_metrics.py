"""Metrics: counts that add up, in process and over HTTP from the real `dramatiq` command with two
worker processes, on real Redis and real RabbitMQ."""

from __future__ import annotations

import socket
import textwrap
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import dramatiq
import pika
import pytest
import redis
from dramatiq import Broker, Worker
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.errors import PermanentError, TransientError
from dramatiq_fairway.middlewares.metrics import Metrics, find_metrics, queue_depth_by_level
from dramatiq_fairway.middlewares.metrics_families import PendingSamples
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.workers import WorkerRegistry

from ..conftest import redis_for_tests
from ..support.fair_support import delete_namespace, fair_broker
from ..support.helpers import dramatiq_command, free_port, settings_env, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


def test_outcomes_add_up_in_process(
    broker: Broker, queue_name: str, state_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    metrics = find_metrics(broker)
    assert isinstance(metrics, Metrics)
    assert not metrics.multiprocess
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=2, min_backoff=10, max_backoff=20)
    def work(n: int, kind: str) -> None:
        with lock:
            attempts[n] = attempts.get(n, 0) + 1
            first = attempts[n] == 1
        if kind == "flaky" and first:
            raise TransientError("try again")
        if kind == "dead":
            raise PermanentError("never")

    for n in range(5):
        work.send_with_options(args=(n, "ok"), tenant=f"t{n % 2}")
    for n in range(5, 8):
        work.send_with_options(args=(n, "flaky"), priority_level="high")
    for n in range(8, 10):
        work.send(n, "dead")
    start_worker()

    def scraped() -> Samples | None:
        samples = parse(generate_latest(metrics.registry).decode())
        done = total(samples, "fairway_messages_total", outcome="success") == 8
        return samples if done and total(samples, "fairway_messages_total", outcome="dead_lettered") == 2 else None

    samples = wait_for(scraped, timeout=30)
    queue = {"queue": queue_name, "actor": "work"}
    assert total(samples, "fairway_messages_total", outcome="retried", **queue) == 3
    assert total(samples, "fairway_retries_total", classification="transient", **queue) == 3
    assert total(samples, "fairway_dead_letters_total", error_type="dramatiq_fairway.errors.PermanentError") == 2
    assert total(samples, "fairway_message_duration_seconds_count", **queue) == 13
    assert total(samples, "fairway_message_wait_seconds_count", queue=queue_name) == 13
    assert total(samples, "fairway_message_wait_seconds_count", priority_level="HIGH") == 6
    assert total(samples, "fairway_tenant_served_total", tenant="t0") == 3
    assert total(samples, "fairway_tenant_served_total", tenant="t1") == 2
    assert total(samples, "fairway_tenant_served_total", queue=queue_name) == 13
    assert total(samples, "fairway_in_flight", queue=queue_name) == 0


def test_tenant_labels_are_capped(broker: Broker, settings: Settings, start_worker: Callable[..., Worker]) -> None:
    capped = Metrics(
        settings=settings.model_copy(update={"metrics": settings.metrics.model_copy(update={"max_tenants": 2})})
    )
    labels = [capped._tenant_label({"tenant": f"t{n}"}) for n in range(4)]
    assert labels == ["t0", "t1", "other", "other"]
    assert capped._tenant_label({"tenant": "t1"}) == "t1"


def test_queued_samples_export_exactly_as_direct_ones() -> None:
    def families(registry: CollectorRegistry) -> tuple[Histogram, Counter, Gauge]:
        return (
            Histogram("wait_seconds", "w", ["queue"], buckets=(0.01, 0.1, 1), registry=registry),
            Counter("jobs", "j", ["queue"], registry=registry),
            Gauge("running", "r", ["queue"], registry=registry),
        )

    values = [0.0, 0.005, 0.01, 0.0100001, 0.5, 1.0, 7.0, 0.05]
    direct = CollectorRegistry()
    histogram, counter, gauge = families(direct)
    for value in values:
        histogram.labels("q").observe(value)
        counter.labels("q").inc()
        gauge.labels("q").inc()
    gauge.labels("q").dec()

    queued = CollectorRegistry()
    pending = PendingSamples()
    queued.register(pending)
    histogram, counter, gauge = families(queued)
    for value in values:
        pending.observe(histogram.labels("q"), value)
        pending.add(counter.labels("q"), 1)
        pending.add(gauge.labels("q"), 1)
    pending.add(gauge.labels("q"), -1)
    assert total(parse(generate_latest(queued).decode()), "jobs_total") == len(values)  # the scrape flushed

    def without_created(samples: Samples) -> Samples:
        return {key: value for key, value in samples.items() if not key[0].endswith("_created")}

    assert without_created(parse(generate_latest(queued).decode())) == without_created(
        parse(generate_latest(direct).decode())
    )


def test_breaker_metrics(settings: Settings) -> None:
    metrics = Metrics(settings=settings)
    metrics.breaker_changed("semantic_scholar", "open", previous="closed")
    metrics.breaker_changed("semantic_scholar", "open", previous="open")
    samples = parse(generate_latest(metrics.registry).decode())
    assert total(samples, "fairway_breaker_state", key="semantic_scholar") == 2
    assert total(samples, "fairway_breaker_transitions_total", key="semantic_scholar", to="open") == 1


# prometheus_client is imported before fairway on purpose: Metrics must still export from every
# worker process (it repairs the value class prometheus_client chose without the multiprocess dir).
METRICS_APP = """
    import os
    import time

    import dramatiq
    import prometheus_client

    from dramatiq_fairway import setup
    from dramatiq_fairway.connections import redis_client
    from dramatiq_fairway.errors import PermanentError, TransientError
    from dramatiq_fairway.settings import TlsSettings

    broker = setup()
    state = redis_client(os.environ["FAIRWAY_STATE_URL"], TlsSettings())  # a Sentinel or cluster URL too
    prefix = os.environ["FAIRWAY_NAMESPACE"]

    @dramatiq.actor(broker=broker, queue_name=os.environ["TEST_QUEUE"], max_retries=2, min_backoff=10, max_backoff=20)
    def work(n, kind):
        state.sadd(prefix + ":pids", os.getpid())
        time.sleep(0.05)
        if kind == "flaky" and state.incr(f"{prefix}:attempts:{n}") == 1:
            raise TransientError("try again")
        if kind == "dead":
            raise PermanentError("never")
"""


@pytest.mark.chaos  # the real dramatiq command end to end (slow)
def test_two_dramatiq_processes_add_up_over_http(
    broker: Broker, settings: Settings, queue_name: str, state_client: redis.Redis, short_tmp: Path
) -> None:
    (short_tmp / "metrics_app.py").write_text(textwrap.dedent(METRICS_APP))

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def work(n: int, kind: str) -> None:
        raise AssertionError("runs in the worker processes only")

    kinds = ["ok"] * 14 + ["flaky"] * 6 + ["dead"] * 4
    port = free_port()
    env = {
        **settings_env(settings),
        "TEST_QUEUE": queue_name,
        "PYTHONPATH": str(short_tmp),
        "FAIRWAY_METRICS__PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(short_tmp / "prom"),
    }

    def scrape() -> Samples | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                samples = parse(response.read().decode())
        except OSError:
            return None
        finished = total(samples, "fairway_messages_total", queue=queue_name, outcome="success") == 20
        dead = total(samples, "fairway_messages_total", queue=queue_name, outcome="dead_lettered") == 4
        return samples if finished and dead else None

    with dramatiq_command("metrics_app", env, processes=2, threads=2, log_file=short_tmp / "log"):
        # Both processes up before the jobs exist: one that booted a second earlier on a busy
        # machine took all 24 jobs (30 attempts of 50 ms) from the queue before the other consumed.
        registry = WorkerRegistry(state_client, settings.namespace)
        wait_for(lambda: len(registry.live()) == 2, timeout=60, interval=0.2)
        for n, kind in enumerate(kinds):
            work.send(n, kind)
        samples = wait_for(scrape, timeout=90, interval=0.5)
        labels = {"queue": queue_name, "actor": "work"}
        assert total(samples, "fairway_messages_total", outcome="retried", **labels) == 6
        assert total(samples, "fairway_messages_total", outcome="skipped", **labels) == 0
        assert total(samples, "fairway_retries_total", classification="transient", **labels) == 6
        assert total(samples, "fairway_dead_letters_total", **labels) == 4
        assert total(samples, "fairway_message_duration_seconds_count", **labels) == 30
        assert total(samples, "fairway_message_wait_seconds_count", queue=queue_name) == 30
        assert total(samples, "fairway_tenant_served_total", queue=queue_name, tenant="default") == 30
        assert total(samples, "fairway_in_flight", queue=queue_name) == 0
        assert len(state_client.smembers(f"{settings.namespace}:pids")) == 2
        run_dirs = list((short_tmp / "prom").glob("fairway-metrics-*/run-*"))
        assert len(run_dirs) == 1
        assert len({path.stem.rsplit("_", 1)[1] for path in run_dirs[0].glob("counter_*.db")}) == 2


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_queue_depth_comes_from_broker_counters(broker: Broker, queue_name: str) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def waiting() -> None:
        pass

    for _ in range(3):
        waiting.send()
    per_level = {"CRITICAL": 0, "HIGH": 0, "NORMAL": 3, "LOW": 0, "BATCH": 0}
    wait_for(lambda: dict(queue_depth_by_level(broker, queue_name)) == per_level)


@pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)
def test_queue_depth_per_level_on_fair_redis(settings: Settings, queue_name: str) -> None:
    fair = fair_broker(settings)
    try:

        @dramatiq.actor(broker=fair, queue_name=queue_name)
        def waiting() -> None:
            pass

        waiting.send_with_options(priority_level="high")
        waiting.send()
        waiting.send()
        depths = dict(queue_depth_by_level(fair, queue_name))
        assert depths == {"CRITICAL": 0, "HIGH": 1, "NORMAL": 2, "LOW": 0, "BATCH": 0}
    finally:
        fair.flush_all()
        fair.close()
        client = redis_for_tests()
        delete_namespace(client, settings.namespace)
        client.close()


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_depth_sampling_never_declares_a_queue(broker: Broker, queue_name: str, settings: Settings) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def waiting() -> None:
        pass

    waiting.send()
    missing = f"{queue_name}_gone"
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        list(queue_depth_by_level(broker, missing))
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        connection.channel().queue_declare(missing, passive=True)
    connection.close()
    depths = dict(queue_depth_by_level(broker, queue_name))
    assert depths == {"CRITICAL": 0, "HIGH": 0, "NORMAL": 1, "LOW": 0, "BATCH": 0}


@pytest.mark.chaos  # the real dramatiq command end to end (slow)
@pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)
def test_a_taken_metrics_port_is_one_warning_and_the_worker_goes_on(
    broker: Broker, settings: Settings, queue_name: str, state_client: redis.Redis, short_tmp: Path
) -> None:
    (short_tmp / "metrics_app.py").write_text(textwrap.dedent(METRICS_APP))

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def work(n: int, kind: str) -> None:
        raise AssertionError("runs in the worker process only")

    work.send(0, "ok")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = {
        **settings_env(settings),
        "TEST_QUEUE": queue_name,
        "PYTHONPATH": str(short_tmp),
        "FAIRWAY_METRICS__PORT": str(port),
        "FAIRWAY_METRICS__HOST": "127.0.0.1",
        "PROMETHEUS_MULTIPROC_DIR": str(short_tmp / "prom"),
    }
    log = short_tmp / "log"
    try:
        with dramatiq_command("metrics_app", env, processes=1, threads=1, log_file=log) as process:
            wait_for(lambda: state_client.smembers(f"{settings.namespace}:pids"), timeout=60)
            wait_for(lambda: "FAIRWAY_METRICS__PORT" in log.read_text(), timeout=30)
            assert process.poll() is None, "the dramatiq command ended"
            # Each worker process says in its heartbeat that its metrics are not served, and why.
            registry = WorkerRegistry.from_settings(settings)
            [worker] = wait_for(lambda: [w for w in registry.live() if w.metrics], timeout=30)
            assert worker.metrics == f"unavailable: cannot listen on 127.0.0.1:{port} (FAIRWAY_METRICS__PORT={port})"
    finally:
        taken.close()
    text = log.read_text()
    assert "Traceback" not in text
    assert "OSError" not in text
    warnings = [line for line in text.splitlines() if "FAIRWAY_METRICS__PORT" in line]
    assert len(warnings) == 1, warnings
    assert "WARNING" in warnings[0]
    assert f"FAIRWAY_METRICS__PORT={port}" in warnings[0]
