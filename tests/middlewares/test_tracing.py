"""Tracing on real Redis and real RabbitMQ, with a real worker: the spans of a send and of each
attempt, their parentage and links, attributes and events, read from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq import Broker, Worker
from dramatiq.middleware import CurrentMessage
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from dramatiq_fairway.errors import PermanentError, TransientError
from dramatiq_fairway.middlewares.tracing import _PROPAGATOR, Tracing, _parent_of
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.breakers import RedisBreakerStore
from dramatiq_fairway.store.dead_letter_model import DeadLetterFilter
from dramatiq_fairway.store.dead_letters import DeadLetterStore

from ..support.helpers import wait_for


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def traced(broker: Broker, provider: TracerProvider) -> Broker:
    """The test's broker with Tracing first in its middleware, as ``install()`` places it."""
    broker.add_middleware(Tracing(tracer_provider=provider), before=type(broker.middleware[0]))
    return broker


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def event_names(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


def test_a_job_sent_inside_a_request_is_one_trace_down_to_the_actors_own_spans(  # noqa: PLR0917 (fixtures)
    traced: Broker, provider: TracerProvider, exporter: InMemorySpanExporter, queue_name: str,
    start_worker: Callable[..., Worker], broker_kind: str,
) -> None:  # fmt: skip
    tracer = provider.get_tracer("app")

    @dramatiq.actor(broker=traced, queue_name=queue_name, tenant="acme")
    def resize(photo: int) -> None:
        with tracer.start_as_current_span("open photo"):
            pass

    start_worker()
    with tracer.start_as_current_span("POST /photos") as request:
        message = resize.send(7)
    wait_for(lambda: spans(exporter, "open photo"))

    (send,) = spans(exporter, f"send {queue_name}")
    (process,) = spans(exporter, f"process {queue_name}")
    (inner,) = spans(exporter, "open photo")
    assert send.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    assert send.parent is not None
    assert send.parent.span_id == request.get_span_context().span_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert inner.parent is not None
    assert inner.parent.span_id == process.context.span_id
    assert {send.context.trace_id, process.context.trace_id, inner.context.trace_id} == {
        request.get_span_context().trace_id
    }
    assert process.attributes is not None
    assert dict(process.attributes) == {
        "messaging.system": broker_kind,
        "messaging.destination.name": queue_name,
        "messaging.message.id": message.message_id,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "fairway.tenant": "acme",
        "fairway.priority_level": "NORMAL",
        "fairway.attempt": 1,
    }
    assert process.status.status_code is StatusCode.UNSET


def test_an_async_actors_spans_nest_under_its_attempt(
    traced: Broker, provider: TracerProvider, exporter: InMemorySpanExporter, queue_name: str,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    tracer = provider.get_tracer("app")

    @dramatiq.actor(broker=traced, queue_name=queue_name)
    async def fetch() -> None:
        with tracer.start_as_current_span("GET /paper"):
            await asyncio.sleep(0)

    start_worker()
    fetch.send()
    wait_for(lambda: spans(exporter, "GET /paper"))
    (process,) = spans(exporter, f"process {queue_name}")
    (inner,) = spans(exporter, "GET /paper")
    assert inner.parent is not None
    assert inner.parent.span_id == process.context.span_id


def test_a_transient_failure_then_success_is_two_attempts_under_one_send(
    traced: Broker, exporter: InMemorySpanExporter, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    failed: list[int] = []

    @dramatiq.actor(broker=traced, queue_name=queue_name, min_backoff=10, max_backoff=50)
    def sync_account(password: str) -> None:
        if not failed:
            failed.append(1)
            raise TransientError(f"upstream refused password={password}")

    start_worker()
    sync_account.send("hunter2-secret")
    wait_for(lambda: len(spans(exporter, f"process {queue_name}")) == 2)

    (send,) = spans(exporter, f"send {queue_name}")
    first, second = sorted(spans(exporter, f"process {queue_name}"), key=lambda span: span.start_time or 0)
    assert {first.parent.span_id, second.parent.span_id} == {send.context.span_id}  # type: ignore[union-attr]
    assert first.attributes["fairway.attempt"] == 1
    assert second.attributes["fairway.attempt"] == 2
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes["error.type"] == "dramatiq_fairway.errors.TransientError"  # type: ignore[index]
    assert first.attributes["fairway.classification"] == "transient"  # type: ignore[index]
    assert event_names(first) == ["fairway.retry_scheduled", "exception"]
    assert 10 <= first.events[0].attributes["fairway.delay_ms"] <= 50  # type: ignore[index,operator]
    exception = first.events[1].attributes
    assert "hunter2-secret" not in str(exception)
    assert "upstream refused" in exception["exception.message"]
    assert second.status.status_code is StatusCode.UNSET
    assert event_names(second) == []


def test_a_permanent_failure_ends_in_a_dead_lettered_event_and_a_requeue_links_to_it(
    traced: Broker, settings: Settings, exporter: InMemorySpanExporter, queue_name: str,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    fixed: list[bool] = []

    @dramatiq.actor(broker=traced, queue_name=queue_name)
    def charge(order: int) -> None:
        if not fixed:
            raise PermanentError("card declined")

    start_worker()
    message = charge.send(5)
    store = DeadLetterStore(settings)
    wait_for(lambda: store.get(message.message_id))
    (failed,) = spans(exporter, f"process {queue_name}")
    assert event_names(failed) == ["exception", "fairway.dead_lettered"]
    assert failed.events[1].attributes == {"fairway.failure_reason": "permanent"}

    fixed.append(True)
    store.requeue(traced, filters=DeadLetterFilter(actor="charge"))
    wait_for(lambda: len(spans(exporter, f"process {queue_name}")) == 2)
    first_send, requeue_send = sorted(spans(exporter, f"send {queue_name}"), key=lambda span: span.start_time or 0)
    rerun = max(spans(exporter, f"process {queue_name}"), key=lambda span: span.start_time or 0)
    assert [link.context.span_id for link in requeue_send.links] == [first_send.context.span_id]
    assert requeue_send.context.trace_id != first_send.context.trace_id
    assert rerun.parent is not None
    assert rerun.parent.span_id == requeue_send.context.span_id


def test_a_breaker_hold_is_a_hold_span_in_the_jobs_trace(
    traced: Broker, settings: Settings, exporter: InMemorySpanExporter, queue_name: str,
    start_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    ran: list[int] = []

    @dramatiq.actor(broker=traced, queue_name=queue_name, breaker="payments")
    def pay(n: int) -> None:
        ran.append(n)

    RedisBreakerStore.from_settings(settings).force_open("payments")
    start_worker()
    pay.send(1)
    wait_for(lambda: spans(exporter, f"hold {queue_name}"))
    held = spans(exporter, f"hold {queue_name}")[0]
    (send,) = spans(exporter, f"send {queue_name}")
    assert held.context.trace_id == send.context.trace_id
    assert held.parent is not None
    assert held.parent.span_id == send.context.span_id
    assert held.events[0].name == "fairway.held"
    attributes: dict[str, Any] = dict(held.events[0].attributes or {})
    assert attributes["fairway.held_by"] == "CircuitBreaker"
    assert attributes["fairway.delay_ms"] > 0
    assert ran == []


def test_a_pipeline_is_one_trace(
    traced: Broker, exporter: InMemorySpanExporter, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    traced.add_middleware(CurrentMessage())

    @dramatiq.actor(broker=traced, queue_name=queue_name)
    def first() -> int:
        return 1

    @dramatiq.actor(broker=traced, queue_name=queue_name)
    def second(n: int) -> None:
        pass

    start_worker()
    dramatiq.pipeline([first.message(), second.message()], broker=traced).run()
    wait_for(lambda: len(spans(exporter, f"process {queue_name}")) == 2)
    traces = {span.context.trace_id for span in exporter.get_finished_spans()}
    assert len(traces) == 1


@pytest.mark.parametrize(
    ("options", "read"),
    [
        ({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "k=v"}, True),
        ({"traceparent": "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"}, False),
        ({"traceparent": "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"}, True),
        ({"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"}, False),
        ({}, False),
    ],
)
def test_the_parent_read_directly_is_the_one_the_propagator_reads(options: dict[str, Any], read: bool) -> None:
    parent, span_context = _parent_of(options)
    expected = trace.get_current_span(_PROPAGATOR.extract(options)).get_span_context()
    assert span_context == expected
    assert trace.get_current_span(parent).get_span_context() == expected
    assert span_context.is_valid is read
    if "tracestate" in options:
        assert span_context.trace_state.get("k") == "v"
