"""Tracing: OpenTelemetry spans that follow a job from ``send`` to its last attempt.

Spans follow the OpenTelemetry messaging conventions (docs/observability.md):

- a PRODUCER span ``send {queue}`` when a message without a trace context is enqueued; its
  context travels in the message options ``traceparent`` / ``tracestate`` (W3C), so it survives
  retries, delays, hold-backs and the dead-letter store;
- a CONSUMER span ``process {queue}`` around each attempt, a child of the producer's context and
  linked to it, made current while the actor runs (the actor's own spans nest under it, async
  actors too: ``ContextAsyncIO`` carries the context into the coroutine);
- events on the consumer span for a retry scheduled (with its delay) and for dead-lettering, and
  an ``exception`` event with the error type and the *redacted* message ``ClassifiedRetries``
  wrote, never the raw exception text, which may hold an argument's secret;
- a short ``hold {queue}`` span for a message a consumer held back (breaker, pause, limits)
  before any worker ran it, with a ``fairway.held`` event naming who held it and for how long.

A message re-enqueued while its own attempt runs (a retry, a shutdown) keeps its context; a job
sent from inside an actor (a pipeline's next step, a child job) gets a producer span under the
running attempt, so a pipeline is one trace. ``fairway dlq requeue`` moves the failed message's
context to ``trace_link``: the requeued job starts a new trace linked to the original one.

It sits first in the broker's middleware (``install()`` puts it there), so its span covers every
other middleware's hooks and ends after ``Retries`` and ``Pipelines`` decided what comes next.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from dramatiq import Broker, Message, Middleware
from dramatiq.broker import MessageProxy
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TracerProvider,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..priority import Priority, level_name
from ..tenants import tenant_of

# Message options: the W3C trace context of the send, and (after a dead-letter requeue) the
# context of the original send, which the requeued send links to.
TRACE_OPTIONS = ("traceparent", "tracestate")
TRACE_LINK = "trace_link"

_PROPAGATOR = TraceContextTextMapPropagator()
# A W3C traceparent of version 00 (lowercase hex), the form ``_parent_of`` reads without the propagator.
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


class Tracing(Middleware):
    """OpenTelemetry spans for sends and attempts.

    Parameters:
      tracer_provider(TracerProvider): where spans go; the global provider when None (the
        application configures the SDK and its exporter, as for any instrumented library).
      system(str): ``messaging.system``; ``rabbitmq`` or ``redis``, from the broker when None.
    """

    def __init__(self, *, tracer_provider: TracerProvider | None = None, system: str | None = None, **_: Any) -> None:
        self.tracer = trace.get_tracer("dramatiq_fairway", tracer_provider=tracer_provider)
        self.system = system
        # The attempt running in each worker thread: (message id, span, context token).
        self._running = threading.local()

    @property
    def actor_options(self) -> set[str]:
        return {*TRACE_OPTIONS, TRACE_LINK}

    # Producer side.

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        running = getattr(self._running, "attempt", None)
        if running is not None and running[0] == message.message_id:
            if delay:
                running[1].add_event("fairway.retry_scheduled", {"fairway.delay_ms": int(delay)})
            return
        if "traceparent" in message.options:
            return
        links = _links_to(message.options.pop(TRACE_LINK, None))
        with self.tracer.start_as_current_span(
            f"send {message.queue_name}",
            kind=SpanKind.PRODUCER,
            links=links,
            attributes=self._attributes(broker, message, "send"),
        ):
            _PROPAGATOR.inject(message.options)

    # Consumer side.

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        options = message.options
        parent, parent_span = _parent_of(options)
        attributes = self._attributes(broker, message, "process")
        attributes["fairway.attempt"] = int(options.get("retries", 0)) + 1
        span = self.tracer.start_span(
            f"process {attributes['messaging.destination.name']}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=[Link(parent_span)] if parent_span.is_valid else None,
            attributes=attributes,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        self._running.attempt = (attributes["messaging.message.id"], span, token)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        span = self._finish(message)
        if span is None:
            return
        # A span the sampler dropped records nothing: its failure attributes need not be built.
        if (exception is not None or message.failed) and span.is_recording():
            self._record_failure(span, message.options, exception, message.failed)
        span.end()

    @staticmethod
    def _record_failure(span: Span, options: dict[str, Any], exception: BaseException | None, failed: bool) -> None:
        if exception is not None:
            error_type = options.get("error_type") or type(exception).__name__
            attributes = {"error.type": error_type}
            if "classification" in options:
                attributes["fairway.classification"] = options["classification"]
            span.set_attributes(attributes)  # one call: each takes the span's lock
            # The message ClassifiedRetries redacted; without it only the type is safe to export.
            span.add_event(
                "exception",
                {"exception.type": error_type, "exception.message": options.get("error_message", "")},
            )
            span.set_status(Status(StatusCode.ERROR))
        if failed:
            span.add_event("fairway.dead_lettered", {"fairway.failure_reason": options.get("failure_reason", "")})

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        span = self._finish(message)
        if span is not None:
            span.add_event("fairway.skipped")
            span.end()

    # Hold-backs, from the consumers (brokers/delivery.py) before any worker saw the message.

    def after_hold(self, broker: Broker, message: Message[Any], delay: int, holder: str) -> None:
        parent = _PROPAGATOR.extract(message.options)
        with self.tracer.start_as_current_span(
            f"hold {message.queue_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=self._attributes(broker, message, "process"),
        ) as span:
            span.add_event("fairway.held", {"fairway.held_by": holder, "fairway.delay_ms": int(delay)})

    def _finish(self, message: MessageProxy) -> Span | None:
        running = getattr(self._running, "attempt", None)
        if running is None or running[0] != message.message_id:
            return None
        self._running.attempt = None
        otel_context.detach(running[2])
        span: Span = running[1]
        return span

    def _attributes(self, broker: Broker, message: Message[Any] | MessageProxy, operation: str) -> dict[str, Any]:
        if self.system is None:
            self.system = _system_of(broker)
        # One read of the options: on a worker, ``message`` is a MessageProxy and each attribute
        # read goes through its ``__getattr__`` (the attempt reads the queue and id back from here).
        # A literal dict: merging a per-queue dict of the four constant ones was no faster.
        options = message.options
        return {
            "messaging.system": self.system,
            "messaging.destination.name": message.queue_name,
            "messaging.message.id": message.message_id,
            "messaging.operation.name": operation,
            "messaging.operation.type": operation,
            "fairway.tenant": tenant_of(options),
            "fairway.priority_level": _level_name(broker, message.actor_name, options),
        }


def _system_of(broker: Broker) -> str:
    return "rabbitmq" if "rabbitmq" in type(broker).__module__.lower() else "redis"


def _level_name(broker: Broker, actor_name: str, options: dict[str, Any]) -> str:
    # At send, before FairPriority wrote it into the options, the level may still be the actor's.
    if "priority_level" not in options and actor_name in broker.actors:
        options = broker.actors[actor_name].options
    level = options.get("priority_level", Priority.NORMAL)
    return level_name(level) or str(level)  # a bad one: FairPriority refuses the send, with the field named


def _parent_of(options: dict[str, Any]) -> tuple[otel_context.Context, SpanContext]:
    """The context ``options`` carry (``traceparent``, ``tracestate``) and its span context.

    A version-00 ``traceparent`` as this middleware writes it is read here directly: the
    propagator's regular expressions and context copies were a fifth of an attempt's tracing cost."""
    header = options.get("traceparent")
    if isinstance(header, str) and _TRACEPARENT.fullmatch(header):
        trace_id, span_id, flags = int(header[3:35], 16), int(header[36:52], 16), int(header[53:55], 16)
        if trace_id and span_id:
            state = options.get("tracestate")
            span_context = SpanContext(
                trace_id,
                span_id,
                is_remote=True,
                trace_flags=TraceFlags(flags),
                trace_state=TraceState.from_header([state]) if isinstance(state, str) and state else None,
            )
            return trace.set_span_in_context(NonRecordingSpan(span_context)), span_context
    parent = _PROPAGATOR.extract(options)
    return parent, trace.get_current_span(parent).get_span_context()


def _links_to(carrier: Any) -> list[Link]:
    if not isinstance(carrier, dict):
        return []
    linked = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return [Link(linked)] if linked.is_valid else []
