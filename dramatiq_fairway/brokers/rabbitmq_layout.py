"""Every AMQP queue fairway declares, by role: the one place that knows their arguments.

RabbitMQ refuses to redeclare a queue with other arguments (406 PRECONDITION_FAILED), so the
arguments of a role never change for a given queue type: classic keeps exactly what fairway (and
stock Dramatiq before it) always declared, so existing queues stay valid. Quorum queues
(``FAIRWAY_RABBITMQ__QUEUE_TYPE=quorum``, for a cluster) differ as docs/design.md explains:

- ``x-queue-type: quorum``; durable, never exclusive or auto-delete (quorum refuses both);
- no ``x-max-priority`` (refused by quorum queues; fairway's levels are queues anyway);
- ``x-delivery-limit`` far above any retry policy: RabbitMQ 4.x defaults it to 20 and then drops
  or dead-letters the message, while a worker restart or a held-back message counts a delivery;
- dead-lettering ``at-least-once`` (RabbitMQ keeps the message until the target queue confirmed
  it), which RabbitMQ only accepts with ``x-overflow: reject-publish``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL
from dramatiq.common import xq_name

QueueType = Literal["classic", "quorum"]

# Deliveries RabbitMQ allows a message of a quorum queue before dead-lettering it: a bound no
# retry policy reaches, so only fairway's retries decide when a job has failed for good.
QUORUM_DELIVERY_LIMIT = 1_000_000


class QueueRole(enum.Enum):
    """What an AMQP queue of a fairway queue ``q`` is for (docs/design.md, "RabbitMQ queue layout").

    A role added in a later change gets its arguments in ``QueueLayout.arguments`` and nowhere
    else, for both queue types."""

    # ``q``: declared as Dramatiq declares it; still consumed, nothing published to it.
    CANONICAL = "canonical"
    # ``q.fair.L.n``: ready messages of one level on one lane.
    LEVEL = "level"
    # ``q.DQ``: delayed and held-back messages, republished by a worker at their eta.
    DELAY = "delay"
    # ``q.XQ``: dead messages nacked without a dead-letter record, kept 7 days.
    DEAD = "dead"
    # ``q.DQ.park.<ms>``, a delay bucket: nobody consumes it; each message waits out the queue's
    # ``ttl_ms`` and is dead-lettered to ``ready_queue`` (``q.DQ``), so no worker holds it unacked.
    PARK = "park"
    # One tenant's own queue: deleted by RabbitMQ once unused for ``expires_ms``.
    TENANT = "tenant"


@dataclass(frozen=True)
class QueueLayout:
    """The declaration arguments of each role for one queue type.

    ``max_priority`` is the classic canonical and delay queues' ``x-max-priority`` (stock Dramatiq's
    ``max_priority``); quorum queues never get one.
    """

    queue_type: QueueType = "classic"
    max_priority: int | None = None

    def arguments(
        self,
        role: QueueRole,
        queue_name: str,
        *,
        ready_queue: str | None = None,
        ttl_ms: int | None = None,
        expires_ms: int | None = None,
    ) -> dict[str, Any]:
        """The ``queue_declare`` arguments of the ``role`` queue of canonical queue ``queue_name``.

        ``ready_queue`` and ``ttl_ms`` are required for PARK (``expires_ms`` optional), ``expires_ms``
        for TENANT."""
        arguments: dict[str, Any]
        if role is QueueRole.DEAD:
            # Static: RabbitMQ expires messages head-first, so every message must share one TTL.
            arguments = {"x-message-ttl": DEAD_MESSAGE_TTL}
        elif role is QueueRole.PARK:
            if ready_queue is None or ttl_ms is None:
                raise ValueError(f"a park queue of {queue_name!r} needs ready_queue and ttl_ms")
            arguments = {**self._dead_letter_to(ready_queue), "x-message-ttl": ttl_ms}
            if expires_ms is not None:
                arguments["x-expires"] = expires_ms
        else:
            arguments = self._dead_letter_to(xq_name(queue_name))
            if role is QueueRole.TENANT:
                if expires_ms is None:
                    raise ValueError(f"a tenant queue of {queue_name!r} needs expires_ms")
                arguments["x-expires"] = expires_ms
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
            arguments["x-delivery-limit"] = QUORUM_DELIVERY_LIMIT
        elif role in (QueueRole.CANONICAL, QueueRole.DELAY) and self.max_priority:
            arguments["x-max-priority"] = self.max_priority
        return arguments

    def _dead_letter_to(self, target: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": target}
        if self.queue_type == "quorum":
            arguments["x-dead-letter-strategy"] = "at-least-once"
            arguments["x-overflow"] = "reject-publish"
        return arguments

    def declare(
        self,
        channel: Any,
        role: QueueRole,
        name: str,
        queue_name: str,
        *,
        ready_queue: str | None = None,
        ttl_ms: int | None = None,
        expires_ms: int | None = None,
    ) -> Any:
        """Declare the AMQP queue ``name`` in ``role`` for canonical queue ``queue_name`` on ``channel``
        (a pika ``BlockingChannel``); the ``Queue.DeclareOk`` frame (its ``method.message_count``)."""
        arguments = self.arguments(role, queue_name, ready_queue=ready_queue, ttl_ms=ttl_ms, expires_ms=expires_ms)
        return channel.queue_declare(queue=name, durable=True, arguments=arguments)
