"""``FairPriority``: priority levels and tenants on every message, checked when it is sent.

Options (actor options, and ``priority_level`` / ``tenant`` also per message, docs/fairness.md):

* ``priority_level``: a ``Priority``, its name (any case) or 1-5; default NORMAL.
* ``tenant``: the fairness key, a non-empty printable string of at most 128 characters; default
  ``"default"``.
* ``tenant_from``: on the actor, the name of the parameter whose argument is the tenant (passed
  by position or by keyword; an int is taken as its decimal string).

At enqueue the options are validated (``InvalidOption``, a ``ValueError`` naming the allowed
values) and written back normalised (level as its number), so the broker and every worker read
the same thing. On RabbitMQ the level also becomes the AMQP ``broker_priority`` (CRITICAL=1 ->
5, BATCH=5 -> 1 on the ``x-max-priority=5`` that fairway's brokers declare; nothing on a
RabbitmqBroker declared without priorities; it still orders the pre-upgrade queue and ``.DQ``).
On ``FairRedisBroker`` the dispatch script applies the scheduling rule (docs/design.md) exactly; on RabbitMQ
fairway's consumer applies it over the messages it holds, with tenants hashed over lanes
(docs/fairness.md).

Capacity: with ``FAIRWAY_FAIRNESS__MAX_QUEUED_PER_TENANT`` set, a message is admitted once, when
first sent, and refused with ``TenantQueueFull`` (a ``QueueFull``) if its tenant already has that
many messages queued on that queue; CRITICAL is exempt. Retries, delay-queue moves and hold-backs
carry the ``fairway_admitted`` option and are never refused. Works on every broker: the queued
messages are counted in the state store, in ``{namespace}:fairness:queued:{queue}:{tenant}``
(zset message id -> admitted at, ms). A message leaves it when it starts running or is
dead-lettered; entries older than ``QUEUED_RETENTION_MS`` (messages flushed away) are trimmed on
the next admission for that tenant.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

import redis
from dramatiq import Actor, Broker, Message, MessageProxy, Middleware
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import q_name
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import MiddlewareError

from ..connections import state_store_client
from ..errors import QueueFull
from ..priority import Priority, broker_priority_of
from ..settings import Settings, load_settings
from ..store.keys import fairness_queued_key
from ..tenants import DEFAULT_TENANT, tenant_of

logger = logging.getLogger(__name__)

MAX_TENANT_LENGTH = 128
ADMITTED = "fairway_admitted"
QUEUED_RETENTION_MS = 7 * 86_400_000


class InvalidOption(MiddlewareError, ValueError):
    """A fairness option is invalid. A ``MiddlewareError`` so that Dramatiq lets it reach the caller."""


class TenantQueueFull(MiddlewareError, QueueFull):
    """The tenant has ``max_queued_per_tenant`` messages queued already."""


class FairPriority(Middleware):
    """Validates and normalises ``priority_level`` and ``tenant``; enforces per-tenant capacity."""

    def __init__(self, *, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.max_queued = self.settings.fairness.max_queued_per_tenant
        self._state: redis.Redis | None = None

    @property
    def actor_options(self) -> set[str]:
        return {"priority_level", "tenant", "tenant_from"}

    def before_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        if "priority_level" in actor.options:
            _level(actor.options["priority_level"])
        if "tenant" in actor.options:
            _tenant(actor.options["tenant"])
        parameter = actor.options.get("tenant_from")
        if parameter is not None and parameter not in inspect.signature(actor.fn).parameters:
            raise InvalidOption(f"tenant_from: {actor.actor_name} has no parameter {parameter!r}")

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        actor = _actor_of(broker, message)
        actor_options = actor.options if actor else {}
        level = _level(message.options.get("priority_level", actor_options.get("priority_level", Priority.NORMAL)))
        tenant = _tenant(self._tenant_of(message, actor))
        message.options["priority_level"] = int(level)
        message.options["tenant"] = tenant
        if isinstance(broker, RabbitmqBroker) and broker.max_priority:
            # AMQP: higher is more urgent. CRITICAL gets the queue's top priority.
            message.options["broker_priority"] = broker_priority_of(level, broker.max_priority)
        if ADMITTED not in message.options:
            if self.max_queued is not None and level is not Priority.CRITICAL:
                self._admit(message, tenant, self.max_queued)
            message.options[ADMITTED] = True

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self.release(message)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        self.release(message)

    def _tenant_of(self, message: Message[Any], actor: Actor[Any, Any] | None) -> object:
        if "tenant" in message.options:
            return message.options["tenant"]
        parameter = actor.options.get("tenant_from") if actor else None
        if actor is None or parameter is None:
            return actor.options.get("tenant", DEFAULT_TENANT) if actor else DEFAULT_TENANT
        try:
            bound = inspect.signature(actor.fn).bind(*message.args, **message.kwargs)
        except TypeError as error:
            raise InvalidOption(f"tenant_from: cannot bind the arguments of {actor.actor_name}: {error}") from None
        bound.apply_defaults()
        value = bound.arguments.get(parameter)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    def _admit(self, message: Message[Any], tenant: str, limit: int) -> None:
        key = self._queued_key(message, tenant)
        now = int(time.time() * 1000)
        try:
            with self._state_client().pipeline() as pipe:
                pipe.zremrangebyscore(key, "-inf", now - QUEUED_RETENTION_MS)
                pipe.zadd(key, {message.message_id: now})
                pipe.zcard(key)
                queued = pipe.execute()[-1]
            if queued > limit:
                self._state_client().zrem(key, message.message_id)
                raise TenantQueueFull(
                    f"tenant {tenant!r} has {limit} messages queued on {message.queue_name!r} "
                    "(FAIRWAY_FAIRNESS__MAX_QUEUED_PER_TENANT); CRITICAL messages are exempt"
                )
        except redis.RedisError as error:
            # Capacity protects the queue, it must not stop producers when the state store is down.
            logger.warning("Capacity of tenant %r not checked, the state store failed: %s", tenant, error)

    def release(self, message: Message[Any] | MessageProxy) -> None:
        """Take ``message`` out of its tenant's queued count (started, dead-lettered, or never written)."""
        if self.max_queued is None or ADMITTED not in message.options:
            return
        try:
            self._state_client().zrem(self._queued_key(message, tenant_of(message.options)), message.message_id)
        except redis.RedisError as error:
            logger.warning("Queued count of message %s not released: %s", message.message_id, error)

    def _queued_key(self, message: Message[Any] | MessageProxy, tenant: str) -> str:
        return fairness_queued_key(self.settings.namespace, q_name(message.queue_name), tenant)

    def _state_client(self) -> redis.Redis:
        if self._state is None:
            self._state = state_store_client(self.settings)
        return self._state


def _actor_of(broker: Broker, message: Message[Any]) -> Actor[Any, Any] | None:
    try:
        return broker.get_actor(message.actor_name)
    except ActorNotFound:
        return None


def _level(value: object) -> Priority:
    try:
        return Priority.parse(value)
    except ValueError as error:
        raise InvalidOption(str(error)) from None


def _tenant(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TENANT_LENGTH or not value.isprintable():
        raise InvalidOption(
            f"tenant: {value!r} is not allowed; a tenant is a non-empty printable string "
            f"of at most {MAX_TENANT_LENGTH} characters"
        )
    return value
