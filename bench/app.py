"""The worker app of bench/overhead.py: the same actors on plain Dramatiq or on the fairway stack.

``BENCH_MODE=plain`` builds Dramatiq's own broker with its defaults; ``BENCH_MODE=fairway`` (and
``encrypted``, run with ``FAIRWAY_ENCRYPTION__KEYS`` set) calls ``dramatiq_fairway.setup()``;
``BENCH_MODE=traced`` does too, with tracing on, an always-on sampler and every span kept in
memory (the cost of making and ending spans, without an export's) through a ``SimpleSpanProcessor``,
which hands each span to the exporter in the job's thread as it ends; ``BENCH_MODE=traced_batch``
puts the same exporter behind a ``BatchSpanProcessor``, as a production setup would
(docs/observability.md); ``BENCH_MODE=traced_dropped`` is the ``traced`` mode with an exporter
that keeps no span, as one that sends them elsewhere: the spans the in-memory exporter keeps cost
the collector a share of an attempt (docs/benchmarks.md), which a production worker does not pay.
``FAIRWAY_BROKER`` picks Redis or RabbitMQ for all.
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

import dramatiq_fairway
from dramatiq_fairway.settings import TracingSettings, load_settings

# One queue per mode: RabbitMQ refuses to redeclare plain Dramatiq's queue with fairway's
# x-max-priority (406 PRECONDITION_FAILED), as it would for a user adopting fairway (`fairway migrate`).
QUEUE = f"bench_{os.environ.get('BENCH_MODE', 'plain')}"
LATENCY_KEY = "bench:latency"
FINISHED_KEY = "bench:finished"

settings = load_settings()
if os.environ.get("BENCH_MODE") in ("traced", "traced_batch", "traced_dropped"):
    from collections.abc import Sequence

    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    class DroppingExporter(SpanExporter):
        """Takes every span and keeps none."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:  # noqa: ARG002 - the interface
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON)
    processor = BatchSpanProcessor if os.environ["BENCH_MODE"] == "traced_batch" else SimpleSpanProcessor
    exporter = DroppingExporter() if os.environ["BENCH_MODE"] == "traced_dropped" else InMemorySpanExporter()
    provider.add_span_processor(processor(exporter))
    trace.set_tracer_provider(provider)
    broker = dramatiq_fairway.setup(settings.model_copy(update={"tracing": TracingSettings(enabled=True)}))
elif os.environ.get("BENCH_MODE") in ("fairway", "encrypted"):
    broker = dramatiq_fairway.setup(settings)
elif settings.broker == "rabbitmq":
    broker = RabbitmqBroker(url=settings.rabbitmq_url.split(","))
    dramatiq.set_broker(broker)
else:
    broker = RedisBroker(url=settings.redis_url)
    dramatiq.set_broker(broker)

recorder = redis.Redis.from_url(settings.redis_url)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop() -> None:
    """Nothing: what is measured is the queue and the middleware."""


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def one_ms() -> None:
    """A job with a real duration: 1 ms of waiting, as for a fast call to another service."""
    time.sleep(0.001)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def payload(text: str) -> None:
    """Nothing, but with 1 KiB of argument: what encryption seals and opens."""


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def probe(sent_at: float) -> None:
    """Records the enqueue → start latency."""
    recorder.rpush(LATENCY_KEY, time.time() - sent_at)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def finished() -> None:
    """Sent after a run's jobs: the time it ran marks the end of the drain."""
    recorder.rpush(FINISHED_KEY, time.time())
