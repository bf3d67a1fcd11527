"""Queued messages per (queue, level, tenant) on RabbitMQ, kept in the state store.

AMQP counts per queue only; ``FairRabbitmqBroker`` routes a tenant with ``isolate_at`` messages
queued on its lane to a queue of its own, so it needs the count per tenant, and so does
``fairway queues``. One hash per queue, ``{<namespace>:<queue>}:rabbitmq:tenants`` (one hash
slot), written by ``tenant_counts.lua``, whose header lists the fields. A count covers a message
from its publish until it is settled (acked, dead-lettered, moved to the delay queue).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from ..priority import Priority
from .limits import queue_prefix
from .scripts import LuaScript, ScriptCall, ScriptsInFlight, run_scripts

_LUA = LuaScript.load(Path(__file__).with_name("tenant_counts.lua"))

LANE = "l"
OWN = "o"
# Bits of the reply of a route or count call: this message goes to the tenant's own queue; its next one would.
THIS_OWN = 1
NEXT_OWN = 2


def tenant_counts_key(namespace: str, queue_name: str) -> str:
    return queue_prefix(namespace, queue_name) + ":rabbitmq:tenants"


@dataclass(frozen=True)
class Slot:
    """Where a tenant's messages of one level wait: its lane (``LANE``) or its own queue (``OWN``)."""

    kind: str
    level: Priority
    tenant: str

    @property
    def field(self) -> str:
        return f"{self.kind}|{int(self.level)}|{self.tenant}"

    @classmethod
    def parse(cls, field: bytes | str) -> Slot:
        text = field.decode() if isinstance(field, bytes) else field
        kind, level, tenant = text.split("|", 2)
        return cls(kind, Priority(int(level)), tenant)


class TenantCounts:
    """The counts of one namespace (``tenant_counts.lua``); every method is one round trip."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def route(self, queue_name: str, level: Priority, tenant: str, isolate_at: int) -> bool:
        """Count one message of ``tenant``; whether it goes to the tenant's own queue."""
        call = self._route_call(queue_name, level, tenant, isolate_at)
        return bool(int(_LUA.call(self.client, call.keys, call.args)) & THIS_OWN)

    def route_with(
        self, queue_name: str, level: Priority, tenant: str, isolate_at: int, riders: Sequence[ScriptCall]
    ) -> tuple[int, list[Any]]:
        """``route``, with ``riders`` (script calls on this server) sent after it in the same
        pipeline: one round trip. The script's reply (bits ``THIS_OWN``, ``NEXT_OWN``) and the
        riders' replies, error replies returned."""
        call = self._route_call(queue_name, level, tenant, isolate_at)
        reply, *replies = run_scripts(self.client, [call], best_effort=riders)
        return int(reply), replies

    def count_sending(
        self, queue_name: str, level: Priority, tenant: str, isolate_at: int, riders: Sequence[ScriptCall], *, own: bool
    ) -> ScriptsInFlight:
        """Count one message of ``tenant`` being published to its own queue (``own``) or its lane,
        as the ``NEXT_OWN`` bit of an earlier reply said, with ``riders``, without waiting for the
        replies: the first says (``NEXT_OWN``) where the tenant's next message goes."""
        key = tenant_counts_key(self.namespace, queue_name)
        args = ["count", int(level), tenant, isolate_at, OWN if own else LANE]
        return ScriptsInFlight(self.client, [ScriptCall(_LUA, [key], args), *riders])

    def unroute_call(self, queue_name: str, level: Priority, tenant: str, *, own: bool) -> ScriptCall:
        """The call that takes back a ``route`` whose message was never published."""
        field = Slot(OWN if own else LANE, level, tenant).field
        return ScriptCall(_LUA, [tenant_counts_key(self.namespace, queue_name)], ["settle", field, 1])

    def route_many(self, queue_name: str, slots: Sequence[tuple[Priority, str]], isolate_at: int) -> list[bool]:
        """``route`` for each (level, tenant) of ``slots``, in order, in one round trip."""
        calls = [self._route_call(queue_name, level, tenant, isolate_at) for level, tenant in slots]
        return [bool(int(reply) & THIS_OWN) for reply in run_scripts(self.client, calls)]

    def _route_call(self, queue_name: str, level: Priority, tenant: str, isolate_at: int) -> ScriptCall:
        key = tenant_counts_key(self.namespace, queue_name)
        return ScriptCall(_LUA, [key], ["route", int(level), tenant, isolate_at])

    def settle(self, queue_name: str, settled: Mapping[Slot, int]) -> None:
        """``settled[slot]`` messages of each slot left their queue for good."""
        if settled:
            args = [part for slot, n in settled.items() for part in (slot.field, n)]
            _LUA.run(self.client, [tenant_counts_key(self.namespace, queue_name)], ["settle", *args])

    def heal(self, queue_name: str, stale: Iterable[tuple[Slot, int]]) -> int:
        """Drop the counts that still hold the value seen when their queue was empty; how many went."""
        args = [part for slot, n in stale for part in (slot.field, n)]
        if not args:
            return 0
        return int(_LUA.run(self.client, [tenant_counts_key(self.namespace, queue_name)], ["heal", *args]))

    def snapshot(self, queue_name: str) -> dict[Slot, int]:
        """Every (slot, count) of ``queue_name`` with something queued."""
        raw = self.client.hgetall(tenant_counts_key(self.namespace, queue_name))
        return {Slot.parse(field): int(value) for field, value in raw.items()}

    def counts_of(self, queue_name: str, slots: list[Slot]) -> dict[Slot, int]:
        """The counts of ``slots`` only (0 where nothing is queued)."""
        values = self.client.hmget(tenant_counts_key(self.namespace, queue_name), [slot.field for slot in slots])
        return {slot: int(value or 0) for slot, value in zip(slots, values, strict=True)}

    def clear(self, queue_name: str) -> None:
        """Forget every count of ``queue_name`` (its AMQP queues were purged)."""
        self.client.delete(tenant_counts_key(self.namespace, queue_name))
