"""Bulk enqueue on the brokers: every send check per message, the writes batched (docs/design.md, "Bulk enqueue").

Each message first goes through what ``enqueue`` runs before it writes: its actor must be
declared, then the ``before_enqueue`` hooks (FairPriority's level, tenant and capacity, JobStatus's
options, MessageSize) run for it alone. A message they refuse gets that error as its outcome and
the batch goes on. The accepted ones are written together: one pipeline of enqueue script calls on
``FairRedisBroker``, windows of publishes under streamed publisher confirms on
``FairRabbitmqBroker`` (``rabbitmq_confirms.py``), ``enqueue`` one by one on any other broker.
Then the ``after_enqueue`` hooks run for each written message, JobStatus collecting the PENDING
statuses into one round trip: a status is never written before its message. A message refused
after FairPriority admitted it, or whose write failed, gives its place in the tenant's queued
count back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import redis
from dramatiq import Broker, Message
from dramatiq.common import q_name
from dramatiq.errors import ActorNotFound, DramatiqError
from dramatiq.middleware import MiddlewareError

from ..middlewares.fairness import FairPriority
from ..middlewares.message_size import encoded
from ..middlewares.status import JobStatus
from ..store.scripts import ScriptCall, ScriptsInFlight, run_scripts
from .fair_redis import FairRedisBroker
from .rabbitmq import FairRabbitmqBroker
from .rabbitmq_confirms import publish_confirmed

# Messages of one queue stored by one script call (a batch's calls all go in one pipeline): few
# enough that Redis is not held long by one call.
ENQUEUES_PER_CALL = 100

# What became of one message of a batch: the message as enqueued, or the error that refused it.
Outcome = Message[Any] | Exception


def enqueue_batch(broker: Broker, messages: Sequence[Message[Any]]) -> list[Outcome]:
    """The outcome of each of ``messages`` (no delay), in order; see the module's docstring."""
    status = next((m for m in broker.middleware if isinstance(m, JobStatus)), None)
    with status.pending_in_one_write() if status is not None else contextlib.nullcontext():
        if isinstance(broker, FairRedisBroker):
            return _on_fair_redis(broker, messages)
        if isinstance(broker, FairRabbitmqBroker):
            return publish_confirmed(broker, messages, check, give_back)
        return [_enqueue_one(broker, message) for message in messages]


def check(broker: Broker, message: Message[Any]) -> Exception | None:
    """Run the checks ``enqueue`` runs before it writes (which may set options); the refusal, or None."""
    try:
        broker.get_actor(message.actor_name)
        broker.emit_before("enqueue", message, None)
    except (ActorNotFound, MiddlewareError) as error:
        give_back(broker, message)
        return error
    return None


def give_back(broker: Broker, message: Message[Any]) -> None:
    """Release the capacity FairPriority admitted ``message`` with (nothing if it did not)."""
    for middleware in broker.middleware:
        if isinstance(middleware, FairPriority):
            middleware.release(message)


def _enqueue_one(broker: Broker, message: Message[Any]) -> Outcome:
    if message.actor_name not in broker.actors:
        return ActorNotFound(f"Actor {message.actor_name!r} not found.")
    try:
        return broker.enqueue(message)
    except (MiddlewareError, DramatiqError, redis.RedisError) as error:
        return error


def _on_fair_redis(broker: FairRedisBroker, messages: Sequence[Message[Any]]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    writes = _RedisWrites(broker, outcomes)
    groups: dict[tuple[str, int], list[_Accepted]] = {}  # by queue and partition: one call each
    for original in messages:
        message = original.copy(queue_name=q_name(original.queue_name), options={"redis_message_id": str(uuid4())})
        refusal = check(broker, message)
        if refusal is None:
            try:
                key = (message.queue_name, broker.partition_of(message))
                group = groups.setdefault(key, [])
                group.append((len(outcomes), message, encoded(message)))
            except (TypeError, ValueError) as error:  # not JSON, on a broker without MessageSize
                give_back(broker, message)
                refusal = error
        outcomes.append(refusal or message)
        if refusal is None and len(group) == ENQUEUES_PER_CALL:
            writes.send(groups.pop(key))
    for group in groups.values():
        writes.send(group)
    writes.land()
    return outcomes


# (position in the batch, message, body) of a message that passed the checks.
_Accepted = tuple[int, Message[Any], bytes]


class _RedisWrites:
    """The enqueue calls of a batch on FairRedisBroker, ``ENQUEUES_PER_CALL`` messages of one queue
    each. A call is written without waiting for its reply, which is read when the next call is
    ready: Redis runs one while Python checks and encodes the messages of the next, and one call at
    a time keeps the batch's order. With ``FAIRWAY_REDIS_WAIT_REPLICAS`` the calls go in one
    pipeline at the end, ``WAIT`` after them. A call that fails refuses its own messages only."""

    def __init__(self, broker: FairRedisBroker, outcomes: list[Outcome]) -> None:
        self.broker = broker
        self.outcomes = outcomes
        self.replicas = broker.settings.redis_wait_replicas
        self.waiting: list[tuple[list[_Accepted], ScriptCall]] = []
        self.flight: tuple[list[_Accepted], ScriptsInFlight] | None = None

    def send(self, chunk: list[_Accepted]) -> None:
        call = self.broker.enqueue_call(chunk[0][1], chunk[0][2], *[(m, b) for _, m, b in chunk[1:]])
        if self.replicas:
            self.waiting.append((chunk, call))
            return
        self.land()
        try:
            self.flight = (chunk, ScriptsInFlight(self.broker.client, [call]))
        except redis.RedisError as error:
            self._settle(chunk, error)

    def land(self) -> None:
        """Read the reply of the call in flight; send the calls waiting for ``WAIT``."""
        if self.flight is not None:
            chunk, flight = self.flight
            self.flight = None
            try:
                [reply] = flight.replies()
            except redis.RedisError as error:  # whether it ran is unknown: failed (a resend is at least once)
                reply = error
            self._settle(chunk, reply)
        if self.waiting:
            calls = [call for _, call in self.waiting]
            try:
                replies = run_scripts(self.broker.client, [], replicas=self.replicas, best_effort=calls)
            except redis.RedisError as error:
                replies = [error] * len(calls)
            for (chunk, _), reply in zip(self.waiting, replies, strict=True):
                self._settle(chunk, reply)
            self.waiting = []

    def _settle(self, chunk: list[_Accepted], reply: Any) -> None:
        for index, message, _ in chunk:
            if isinstance(reply, redis.RedisError):
                give_back(self.broker, message)
                self.outcomes[index] = reply
            else:
                self.broker.emit_after("enqueue", message, None)
