"""Per-tenant limits (docs/limits.md): where they are kept, how they change at run time, who is in flight.

A limit (``max_concurrency``, ``rate`` per second, ``burst``) applies per (queue, tenant). Two
layers are kept per queue, and each field resolves on its own (``limits_lib.lua``): the operator
layer (``fairway limits set``), then the Settings layer (``FAIRWAY_LIMITS__*``, written by each
worker when it starts on the queue), the tenant's own entry before the queue's default.

Where: on Redis, the keys live in the *broker's* Redis under the queue's hash tag, because the
dispatch script reads them (docs/design.md, "Redis keys"); on RabbitMQ, in the state store, where the consumer-side
limiter (``middlewares/limits.py``) reads them. Keys (``P`` = ``{<namespace>:<queue>}``):

``P:limits``
    hash ``"base|<tenant>"`` / ``"ops|<tenant>"`` -> ``"cap|rate|burst"`` (empty = not set in that
    layer; tenant ``""`` is the default). No TTL.
``P:limits:version``
    counter bumped when a layer changes, so parked tenants are judged again. No TTL.
``P:limits:generation``
    the generation of the operator's changes the ``ops`` layer was built from: an older one is
    never written over it. No TTL.
``P:limits:tokens``
    hash tenant -> ``"tokens|ms"``, the token buckets. No TTL (one field per rate-limited tenant).
``P:limits:running:<tenant>``, ``P:limits:running``
    RabbitMQ only: leases of running jobs (zset id -> expiry ms, :data:`LEASE_MS`) and the tenants
    that have some. Expire by score, so a killed worker's slots come back.
``{<namespace>:limits}``
    hash ``"<queue>|<tenant>"`` -> JSON :class:`TenantLimit`, the operator's changes (queue ``*``:
    every queue), kept so that a queue first used later gets them too. No TTL.
``{<namespace>:limits}:queues``
    set of the queues whose layers were written (what ``list`` and ``set`` walk). No TTL.
``{<namespace>:limits}:generation``
    counter bumped with every operator change. A worker that starts reads the changes and then
    writes them into the queue's ``ops`` layer; an operator change landing between the two has a
    newer generation, so the worker's stale copy is refused instead of undoing it. No TTL.

On Redis the in-flight count per tenant is the broker's own (``P:inflight``, kept by the dispatch
script); on RabbitMQ it is the number of live leases, kept only for tenants that have a cap.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import redis
from dramatiq.common import q_name
from pydantic import ValidationError

from ..connections import broker_redis_url, redis_client, state_store_client
from ..errors import ConfigError
from ..settings import LimitSettings, Settings, TenantLimit
from .partitions import PartitionTags
from .scripts import LuaScript

LIB = (Path(__file__).parent / "limits_lib.lua").read_text()
SCRIPT = LIB + (Path(__file__).parent / "limits.lua").read_text()
_LUA = LuaScript.from_text(SCRIPT)

ALL_QUEUES = "*"
# The key of a queue's default inside LimitSettings.queues (a tenant field "" in Redis).
QUEUE_DEFAULT = "*"
# How long a consumer-side lease lives without renewal (renewed every LEASE_MS / 3 while running).
LEASE_MS = 30_000
LIMIT_FIELDS = ("max_concurrency", "rate", "burst")

BrokerKind = Literal["redis", "rabbitmq"]


def queue_prefix(namespace: str, queue_name: str) -> str:
    """The hash-tagged prefix of every key of ``queue_name`` (its delay queue shares it)."""
    return "{" + f"{namespace}:{q_name(queue_name)}" + "}"


def encode(limit: TenantLimit) -> str:
    return "|".join(
        "" if value is None else _number(value) for value in (limit.max_concurrency, limit.rate, limit.burst)
    )


def decode(raw: str | bytes) -> TenantLimit:
    text = raw.decode() if isinstance(raw, bytes) else raw
    cap, rate, burst = text.split("|")
    return TenantLimit(
        max_concurrency=int(cap) if cap else None,
        rate=float(rate) if rate else None,
        burst=int(burst) if burst else None,
    )


def merged(*limits: TenantLimit | None) -> TenantLimit | None:
    """Field by field, the first limit that sets it; None when no limit is given."""
    present = [limit for limit in limits if limit is not None]
    if not present:
        return None
    fields = {
        name: next((v for lim in present if (v := getattr(lim, name)) is not None), None) for name in LIMIT_FIELDS
    }
    return TenantLimit(**fields)


def settings_layer(limits: LimitSettings, queue_name: str) -> dict[str, str]:
    """The Settings layer of ``queue_name``: tenant -> encoded limit, ``""`` for the default."""
    queue = limits.queues.get(q_name(queue_name), {})
    layer = {
        tenant: merged(queue.get(tenant), limits.tenants.get(tenant))
        for tenant in {*limits.tenants, *queue} - {QUEUE_DEFAULT}
    }
    layer[""] = merged(queue.get(QUEUE_DEFAULT), limits.default)
    return {tenant: encode(limit) for tenant, limit in layer.items() if limit is not None}


def validated(**fields: Any) -> TenantLimit:
    """A TenantLimit, or ConfigError naming the bad field and value in one line."""
    try:
        return TenantLimit(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"{field}: {error.get('input')!r} {error['msg'].lower()}") from None


class TenantLimits:
    """The limits of every queue of a namespace, on the Redis that enforces them.

    ``kind`` says who enforces: ``redis`` (the dispatch script; in flight read from the broker's
    counters) or ``rabbitmq`` (the consumer-side limiter; in flight = live leases).
    """

    def __init__(self, client: redis.Redis, namespace: str, kind: BrokerKind) -> None:
        self.client = client
        self.namespace = namespace
        self.kind = kind
        self.operator_key = "{" + f"{namespace}:limits" + "}"
        self.queues_key = self.operator_key + ":queues"
        self.generation_key = self.operator_key + ":generation"
        # On Redis the dispatch script reads a queue's limits in each of its partitions.
        self.partitions = PartitionTags(client, namespace)

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantLimits:
        if settings.broker == "rabbitmq":
            return cls(state_store_client(settings), settings.namespace, "rabbitmq")
        return cls(redis_client(broker_redis_url(settings), settings.tls), settings.namespace, "redis")

    # Writing the layers.

    def install(self, queue_name: str, limits: LimitSettings) -> None:
        """Write the Settings layer of ``queue_name`` and the operator changes that apply to it.

        Each worker does so when it starts on the queue (the last one to start wins).
        """
        self.client.sadd(self.queues_key, q_name(queue_name))
        self._write(queue_name, "base", settings_layer(limits, queue_name))
        self._write(queue_name, "ops", *self._operator_layer(queue_name))

    def set(self, tenant: str, queue_name: str | None = None, **fields: Any) -> TenantLimit:
        """Change the given fields of ``tenant``'s limit on ``queue_name`` (every queue when None).

        Fields not given keep their operator value, else the Settings one. Returns the operator entry.
        """
        given = {name: value for name, value in fields.items() if value is not None}
        if not tenant:
            raise ConfigError("tenant: '' must not be empty")
        if not given:
            raise ConfigError("limits set: give at least one of --max-concurrency, --rate, --burst")
        key = self._operator_field(queue_name, tenant)
        raw = self.client.hget(self.operator_key, key)
        current = json.loads(raw) if raw else {}
        entry = validated(**{**current, **given})
        self._change_operator_layer(
            lambda pipe: pipe.hset(self.operator_key, key, entry.model_dump_json(exclude_none=True))
        )
        self._refresh(queue_name)
        return entry

    def clear(self, tenant: str, queue_name: str | None = None) -> bool:
        """Drop the operator's change for ``tenant`` (Settings apply again); False if there was none."""
        field = self._operator_field(queue_name, tenant)
        removed = bool(self._change_operator_layer(lambda pipe: pipe.hdel(self.operator_key, field)))
        self._refresh(queue_name)
        return removed

    # Reading.

    def queues(self) -> builtins.list[str]:
        """Queues whose limits were written, and those named by an operator change, sorted."""
        names = {name.decode() for name in self.client.smembers(self.queues_key)}
        names |= {queue for queue, _ in self._operator_entries() if queue != ALL_QUEUES}
        return sorted(names)

    def effective(self, queue_name: str, tenants: Iterable[str]) -> dict[str, TenantLimit]:
        """The limit each tenant has on ``queue_name`` as the enforcing script resolves it."""
        tenants = list(tenants)
        if not tenants:
            return {}
        raw = self._call(queue_name, "describe", *tenants)
        return {tenant: decode(value) for tenant, value in zip(tenants, raw, strict=True)}

    def in_flight(self, queue_name: str, *, now: int | None = None) -> dict[str, int]:
        """Jobs of each tenant counted against its cap on ``queue_name`` (tenants with none left out)."""
        counts: dict[str, int] = {}
        if self.kind == "rabbitmq":
            flat = self._call(queue_name, "in_flight", now=now)
            pairs = zip(flat[::2], flat[1::2], strict=True)
            return {tenant.decode(): int(count) for tenant, count in pairs}
        with self.client.pipeline(transaction=False) as pipe:
            for prefix in self.partitions.prefixes(queue_name):
                pipe.hgetall(prefix + ":inflight")
            for found in pipe.execute():
                for field, count in found.items():
                    tenant = field.decode().split("|", 1)[1]
                    counts[tenant] = counts.get(tenant, 0) + int(count)
        return {tenant: count for tenant, count in counts.items() if count > 0}

    def list(self) -> list[dict[str, Any]]:
        """Rows ``{"queue", "tenant", "max_concurrency", "rate", "burst", "source", "in_flight"}``.

        One row per tenant named in a layer of each queue, and the queue's default (``tenant``
        None) when it has one; ``source`` is ``runtime`` when an operator change applies.
        """
        rows = []
        for queue in self.queues():
            layers = self._layers(queue)
            ops = {tenant for layer, tenant in layers if layer == "ops"}
            tenants = sorted({tenant for _, tenant in layers})
            running = self.in_flight(queue)
            for tenant, limit in self.effective(queue, tenants).items():
                rows.append(
                    {
                        "queue": queue,
                        "tenant": tenant or None,
                        **limit.model_dump(),
                        "source": "runtime" if tenant in ops else "settings",
                        "in_flight": running.get(tenant, 0) if tenant else None,
                    }
                )
        return rows

    def annotate(self, rows: Iterable[Mapping[str, Any]]) -> builtins.list[dict[str, Any]]:
        """``fairway queues --json`` rows with ``in_flight_cap`` and ``rate`` of their (queue, tenant)."""
        rows = builtins.list(rows)
        tenants: dict[str, builtins.set[str]] = {}
        for row in rows:
            tenants.setdefault(row["queue"], builtins.set()).add(row["tenant"])
        limits = {queue: self.effective(queue, names) for queue, names in tenants.items()}
        return [
            {
                **row,
                "in_flight_cap": limits[row["queue"]][row["tenant"]].max_concurrency,
                "rate": limits[row["queue"]][row["tenant"]].rate,
            }
            for row in rows
        ]

    def limited_tenants(self, queue_name: str) -> tuple[builtins.set[str], bool]:
        """Tenants named in a layer of ``queue_name`` and whether it has a default (one round trip)."""
        tenants = {tenant for _, tenant in self._layers(queue_name)}
        return tenants - {""}, "" in tenants

    # Consumer-side enforcement (RabbitMQ).

    def acquire(self, queue_name: str, tenant: str, lease: str, *, now: int | None = None) -> tuple[str, int]:
        """Take a slot and a token for ``tenant``: ``("", 0)``, or the reason (``c``/``r``) and ms to wait."""
        reason, wait = self._call(queue_name, "acquire", tenant, lease, LEASE_MS, now=now)
        return reason.decode(), int(wait)

    def release(self, queue_name: str, tenant: str, lease: str) -> None:
        self._call(queue_name, "release", tenant, lease)

    def renew(self, queue_name: str, leases: Iterable[tuple[str, str]], *, now: int | None = None) -> None:
        """Extend the leases (tenant, lease id) of jobs still running."""
        flat = [part for pair in leases for part in pair]
        if flat:
            self._call(queue_name, "renew", LEASE_MS, *flat, now=now)

    # Internals.

    def _call(self, queue_name: str, command: str, *args: Any, now: int | None = None, prefix: str = "") -> Any:
        return _LUA.run(
            self.client,
            [prefix or queue_prefix(self.namespace, queue_name)],
            [command, "" if now is None else now, *args],
        )

    def _operator_field(self, queue_name: str | None, tenant: str) -> str:
        return f"{q_name(queue_name) if queue_name else ALL_QUEUES}|{tenant}"

    def _operator_entries(self) -> builtins.list[tuple[str, str]]:
        return [_split(field) for field in self.client.hkeys(self.operator_key)]

    def _change_operator_layer(self, change: Callable[[redis.client.Pipeline], object]) -> Any:
        """Apply ``change`` to the operator's hash and bump its generation, atomically; its reply."""
        pipe = self.client.pipeline(transaction=True)
        change(pipe)
        pipe.incr(self.generation_key)
        return pipe.execute()[0]

    def _operator_layer(self, queue_name: str) -> tuple[dict[str, str], int]:
        """The ``ops`` layer of ``queue_name`` and the generation of the changes it was built from."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.operator_key)
        pipe.get(self.generation_key)
        raw_entries, generation = pipe.execute()
        entries: dict[tuple[str, str], TenantLimit] = {}
        for field, raw in raw_entries.items():
            entries[_split(field)] = TenantLimit.model_validate_json(raw)
        queue = q_name(queue_name)
        layer = {}
        for tenant in {tenant for _, tenant in entries}:
            limit = merged(entries.get((queue, tenant)), entries.get((ALL_QUEUES, tenant)))
            if limit is not None:
                layer[tenant] = encode(limit)
        return layer, int(generation or 0)

    def _refresh(self, queue_name: str | None) -> None:
        """Rewrite the operator layer of ``queue_name`` (every installed queue when None)."""
        queues = (
            [q_name(queue_name)] if queue_name else sorted(n.decode() for n in self.client.smembers(self.queues_key))
        )
        for queue in queues:
            self._write(queue, "ops", *self._operator_layer(queue))

    def _layers(self, queue_name: str) -> builtins.list[tuple[str, str]]:
        """(layer, tenant) of every limit kept for ``queue_name``."""
        return [_split(field) for field in self.client.hkeys(queue_prefix(self.namespace, queue_name) + ":limits")]

    def _write(
        self, queue_name: str, name: Literal["base", "ops"], layer: Mapping[str, str], generation: int = 0
    ) -> None:
        pairs = [part for item in sorted(layer.items()) for part in item]
        prefixes = self.partitions.prefixes(queue_name) if self.kind == "redis" else [""]
        for prefix in prefixes:
            self._call(queue_name, "replace", name, generation, *pairs, prefix=prefix)


def _split(field: bytes) -> tuple[str, str]:
    """A field ``b"queue|tenant"`` or ``b"layer|tenant"`` as a pair."""
    first, tenant = field.decode().split("|", 1)
    return first, tenant


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
