"""``enqueue_many``: many messages sent at the cost of a few round trips, and ``group``, a
``dramatiq.group`` that runs through it (docs/design.md, "Bulk enqueue")."""

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


class group(dramatiq.group):  # noqa: N801 (named as the Dramatiq class it stands in for)
    """A ``dramatiq.group`` whose ``run`` sends its messages with :func:`enqueue_many`: one batch
    instead of one ``enqueue`` per child.

    Dramatiq's ``group.run`` calls ``broker.enqueue`` once per child and offers no hook to batch
    them, so use this class where a group of many plain messages is run: ``group([...]).run()``.
    A group with a delay, completion callbacks, or groups and pipelines among its children runs as
    Dramatiq's does. A refused message raises :class:`~dramatiq_fairway.errors.MessagesRefused`
    after the others were sent (Dramatiq's stops at the first failure).
    """

    def run(self, *, delay: int | None = None) -> group:
        plain = all(isinstance(child, Message) for child in self.children)
        if delay or self.completion_callbacks or not plain:
            super().run(delay=delay)
        else:
            enqueue_many(self.children, broker=self.broker)
        return self
