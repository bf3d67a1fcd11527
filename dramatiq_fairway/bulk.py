"""``enqueue_many``: many messages sent at the cost of a few round trips (docs/design.md, "Bulk enqueue")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dramatiq
from dramatiq import Broker, Message

from .brokers.bulk import enqueue_batch
from .errors import MessagesRefused


def enqueue_many(messages: Iterable[Message[Any]], *, broker: Broker | None = None) -> list[Message[Any]]:
    """Enqueue ``messages`` (built with ``actor.message(...)`` / ``actor.message_with_options(...)``).

    Every check of ``send`` applies to each message (declared actor, priority level and tenant,
    capacity, status options, size); the writes are batched: one pipeline on ``FairRedisBroker``,
    streamed publisher confirms on ``FairRabbitmqBroker``, ``enqueue`` one by one on other brokers.
    Each tracked job is PENDING once its message is enqueued. Returns the enqueued messages in
    order. If any message was refused, the others are enqueued all the same and
    :class:`~dramatiq_fairway.errors.MessagesRefused` is raised, naming each refused one on a line
    of its own (its ``refused`` and ``enqueued`` lists hold the details).

    ``broker`` defaults to the global broker (``dramatiq.get_broker()``).
    """
    batch = list(messages)
    outcomes = enqueue_batch(broker or dramatiq.get_broker(), batch)
    enqueued = [outcome for outcome in outcomes if isinstance(outcome, Message)]
    if len(enqueued) < len(batch):
        refused = [
            (index, message, outcome)
            for index, (message, outcome) in enumerate(zip(batch, outcomes, strict=True))
            if not isinstance(outcome, Message)
        ]
        raise MessagesRefused(refused, enqueued)
    return enqueued
