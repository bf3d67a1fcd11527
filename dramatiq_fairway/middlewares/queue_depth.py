"""The queue-depth sampler: each worker process's ``queue_depth`` and tenant-limit gauges.

Queue depth is sampled every :data:`DEPTH_INTERVAL` seconds by each worker process from counters
the broker keeps (``ready_by_level`` of both fairway brokers, the ready count of a passive declare
on a stock RabbitMQ broker, ``LLEN`` on a stock Redis broker), never by scanning a queue; without
a per-level count the level label is ``all``. The same sample also counts tenant throttles and
each tenant's jobs against its cap (``middlewares/limits.py``).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pika
from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import q_name

from ..priority import Priority
from .limits import drain_throttled, tenant_in_flight
from .metrics_families import Families

DEPTH_INTERVAL = 5.0
ALL_LEVELS = "all"


class DepthSampler(threading.Thread):
    """Samples the depth of the worker's queues from the broker's counters, never by scanning."""

    def __init__(self, broker: Broker, families: Families, logger: Any, tenant_label: Callable[[str], str]) -> None:
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
        return [(ALL_LEVELS, passive_ready_count(broker, queue))]
    client = getattr(broker, "client", None)
    if client is not None:
        return [(ALL_LEVELS, int(client.llen(f"{broker.namespace}:{queue}")))]
    return []


def passive_ready_count(broker: RabbitmqBroker, name: str) -> int:
    """Ready messages of the AMQP queue ``name``; refused (404) when it does not exist.

    Passive: a sample must never re-create a queue an operator deleted. A refused declare closes
    the channel, so the calling thread gets a new one next time.
    """
    try:
        return int(broker.channel.queue_declare(queue=name, passive=True).method.message_count)
    except pika.exceptions.AMQPError:
        del broker.channel
        raise
