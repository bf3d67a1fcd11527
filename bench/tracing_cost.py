"""CPU of one traced attempt in this process, split into its parts, and the collector's share.

    python bench/tracing_cost.py             # the split, then 6,400 attempts in a worker's heap
    BENCH_REDIS_URL=redis://127.0.0.1:17720/0 python bench/tracing_cost.py

An attempt is ``Tracing.before_process_message`` + ``after_process_message`` on a real
``MessageProxy`` of a no-op job sent through the middleware (so it carries a ``traceparent``),
with an always-on sampler. The split is the least of many batches with the collector off: on a
shared machine the least holds steady where a mean swings by a third. The second part imports
``bench/app.py`` (the worker's heap: the fairway stack, Dramatiq, Redis, pydantic; it connects to
``BENCH_REDIS_URL``) and runs the attempts a 3,000-job bench worker makes in its life with the
collector on, the spans kept by the SDK's in-memory exporter or not kept at all: the difference
is the collector walking the kept spans, which a worker shipping its spans elsewhere never pays.
docs/benchmarks.md, "Tracing: trimming an attempt", has the figures.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dramatiq import Message
from dramatiq.broker import Broker, MessageProxy
from dramatiq.brokers.stub import StubBroker
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Link, SpanKind

from dramatiq_fairway.middlewares import tracing

QUEUE = "bench_tracing_cost"
BATCHES, BATCH = 400, 50
WORKER_LIFE = 6_400  # attempts a bench/overhead.py worker makes with --jobs 3000


class DroppingExporter(SpanExporter):
    """Takes every span and keeps none, as one that ships them elsewhere."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:  # noqa: ARG002 - the interface
        return SpanExportResult.SUCCESS


def sent(middleware: tracing.Tracing, broker: Broker, count: int) -> list[MessageProxy]:
    messages = []
    for _ in range(count):
        message = Message(QUEUE, "noop", (), {}, {"priority_level": 5, "tenant": "default"})
        middleware.before_enqueue(broker, message, None)
        messages.append(MessageProxy(message))
    return messages


def least_us(work: Callable[[], Any], between: Callable[[], Any] = lambda: None) -> float:
    best = float("inf")
    gc.disable()
    try:
        for _ in range(BATCHES):
            started = time.process_time()
            for _ in range(BATCH):
                work()
            best = min(best, time.process_time() - started)
            between()
    finally:
        gc.enable()
    return best / BATCH * 1e6


def split() -> None:
    provider = TracerProvider(sampler=ALWAYS_ON)
    broker = StubBroker()
    middleware = tracing.Tracing(tracer_provider=provider, system="redis")
    message = sent(middleware, broker, 1)[0]
    tracer = provider.get_tracer("bench")
    parent, parent_span = tracing._parent_of(message.options)
    attributes = {**middleware._attributes(broker, message, "process"), "fairway.attempt": 1}
    links = [Link(parent_span)]

    def attempt() -> None:
        middleware.before_process_message(broker, message)
        middleware.after_process_message(broker, message)

    parts: dict[str, Callable[[], Any]] = {
        "ours: the traceparent read (_parent_of)": lambda: tracing._parent_of(message.options),
        "ours: the attribute dict (_attributes)": lambda: middleware._attributes(broker, message, "process"),
        "ours: Link(parent)": lambda: Link(parent_span),
        "context attach + detach": lambda: otel_context.detach(
            otel_context.attach(trace.set_span_in_context(trace.INVALID_SPAN))
        ),
        "SDK start + end, bare": lambda: tracer.start_span("process q", parent, SpanKind.CONSUMER).end(),
        "SDK start + end, 8 attributes": lambda: tracer.start_span(
            "process q", parent, SpanKind.CONSUMER, attributes
        ).end(),
        "SDK start + end, 8 attributes and the link": lambda: tracer.start_span(
            "process q", parent, SpanKind.CONSUMER, attributes, links
        ).end(),
        "whole attempt, no processor": attempt,
    }
    for name, work in parts.items():
        print(f"| {name} | {least_us(work):.1f} |")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    print(f"| whole attempt, SimpleSpanProcessor | {least_us(attempt, exporter.clear):.1f} |")


def in_a_worker_heap(keep: bool) -> float:
    """CPU µs an attempt over a worker's life, collector on, in bench/app.py's heap."""
    provider = TracerProvider(sampler=ALWAYS_ON)
    exporter = InMemorySpanExporter() if keep else DroppingExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    middleware = tracing.Tracing(tracer_provider=provider, system="redis")
    import app  # imported here for its heap, once the environment names the bench's Redis

    messages = sent(middleware, app.broker, WORKER_LIFE)
    gc.collect()
    started = time.process_time()
    for message in messages:
        middleware.before_process_message(app.broker, message)
        middleware.after_process_message(app.broker, message)
    took = (time.process_time() - started) / len(messages) * 1e6
    # The provider outlives this call (the SDK's exit hook holds it): the next run starts clean.
    if isinstance(exporter, InMemorySpanExporter):
        exporter.clear()
    return took


def main() -> None:
    print("| part of one attempt | least µs |\n|---|---:|")
    split()
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    os.environ.update(
        {
            "BENCH_MODE": "fairway",
            "FAIRWAY_BROKER": "redis",
            "FAIRWAY_REDIS_URL": redis_url,
            "FAIRWAY_STATE_URL": redis_url,
            "FAIRWAY_NAMESPACE": "bench_tracing_cost",
        }
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    # One process per exporter would be fairer to the second; alternating twice shows the spread.
    for keep in (True, False, True, False):
        label = "kept (in-memory exporter)" if keep else "not kept"
        print(f"{WORKER_LIFE:,} attempts in a worker's heap, spans {label}: {in_a_worker_heap(keep):.1f} µs each")


if __name__ == "__main__":
    main()
