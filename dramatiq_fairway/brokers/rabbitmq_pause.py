"""How fairway's RabbitMQ consumer keeps a paused queue still: it stops consuming it.

Holding each message of a paused queue back on the delay queue (as a breaker or a limit does)
would re-publish every message about once a second for as long as the pause lasts, and hide the
backlog: a message waiting on the delay queue is delivered to a worker and unacked, so AMQP
counts it nowhere. Instead, once the consumer sees its queue paused (within ``CACHE_SECONDS`` of
``middlewares/pause.py``), it cancels its subscriptions and puts back what it was delivered and
had not handed out; the messages stay ready on their AMQP queues (``fairway queues`` shows them as
``held``) until ``resume``, when it subscribes again. Only messages picked in the moment before the
consumer notices are held back once, through ``QueuePause.hold``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from dramatiq import Broker

from ..middlewares.pause import QueuePause
from .rabbitmq_picker import Delivery, Picker

# Seconds between two looks at the pause flag (QueuePause caches it for CACHE_SECONDS anyway).
CHECK_INTERVAL = 0.25


class PausedSubscriptions:
    """The AMQP subscriptions of one consumer, cancelled while its queue is paused."""

    def __init__(
        self,
        broker: Broker,
        queue_name: str,
        *,
        channel: Any,
        names: Sequence[str],
        on_delivery: Callable[..., None],
        picker: Picker,
        on_pause: Callable[[list[Delivery]], None] = lambda _put_back: None,
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.channel = channel
        self.names = list(names)
        self.on_delivery = on_delivery
        self.picker = picker
        self.on_pause = on_pause
        self.paused = False
        self._tags: list[str] = []
        self._checked_at = float("-inf")

    def subscribe(self) -> None:
        self._tags = [self.channel.basic_consume(name, self.on_delivery) for name in self.names]

    def follow(self) -> None:
        """Cancel or restore the subscriptions when the queue was paused or resumed (consumer thread only)."""
        now = time.monotonic()
        if now - self._checked_at < CHECK_INTERVAL:
            return
        self._checked_at = now
        pause = next((m for m in self.broker.middleware if isinstance(m, QueuePause)), None)
        paused = pause is not None and pause.is_paused(self.broker, self.queue_name)
        if paused == self.paused:
            return
        self.paused = paused
        if not paused:
            self.subscribe()
            return
        for tag in self._tags:
            # Deliveries not yet passed to on_delivery are nacked back by pika itself.
            self.channel.basic_cancel(tag)
        self._tags = []
        put_back = self.picker.drain()
        for delivery in put_back:
            self.channel.basic_nack(delivery.tag, requeue=True)
        self.on_pause(put_back)
