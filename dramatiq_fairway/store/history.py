"""Per-minute history buckets in the state store: what finished, who was served, how long jobs
waited and ran, and the backlog, for ``fairway stats`` and the dashboard (docs/design.md,
"History in Redis").

Keys (``{namespace}`` is ``FAIRWAY_NAMESPACE``; ``{minute}`` is Unix seconds // 60). Every key
shares the hash tag ``{<namespace>:hist}``, so one script call touches one hash slot:

``{<namespace>:hist}:o:{minute}``
    Hash ``queue|actor|outcome`` -> jobs that finished that minute (outcome: ``success``,
    ``retried``, ``dead_lettered``, ``failed``).
``{<namespace>:hist}:t:{minute}``
    Hash ``queue|tenant`` -> jobs run for the tenant; tenants past ``FAIRWAY_METRICS__MAX_TENANTS``
    per process are summed as ``other``, as the metrics cap them.
``{<namespace>:hist}:r:{minute}``
    Hash ``queue|actor|n`` (runs), ``queue|actor|s`` (sum of run times, ms) and
    ``queue|actor|h<i>`` (runs whose time fell in bucket ``i`` of :data:`BOUNDS_MS`).
``{<namespace>:hist}:w:{minute}``
    The same fields per ``queue|level`` for the wait from enqueue (or ``eta``) to start.
``{<namespace>:hist}:b:{minute}``
    Hash ``queue|level`` -> messages waiting, sampled once a minute by ``actors/maintenance.py``.
``{<namespace>:hist}:q:{minute}``
    The same minute per queue (over actors and levels), for ``/api/throughput``:
    ``queue|o|<outcome>``, ``queue|w|n`` (and ``|s``, ``|h<i>``).
``{<namespace>:hist}:a:{minute}``
    The same minute summed over every queue, for the overview: ``o|<outcome>``,
    ``w|<level>|n`` (and ``|s``, ``|h<i>``), ``b|<level>``. A few dozen fields however many
    queues, actors and tenants there are, so an hour of it is read in milliseconds.

Kept :data:`TTL` (24 h) after their last write. Workers add through their status writer (one
``history.lua`` call per flush, in the flush's pipeline), so a job costs no round trip of its own.
A window of minutes is summed on the server (``history_sum.lua``, :meth:`HistoryStore.sums`), so
a reader gets each distinct field once, not once per minute.
Queue names cannot hold ``|``; actor and tenant names may, so readers split on the first ``|``
(and the last, for the field's own suffix).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import redis

from ..priority import Priority, level_name
from ..tenants import tenant_of
from .scripts import LuaScript, ScriptCall, run_scripts

TTL = 24 * 3600
OUTCOMES = ("success", "retried", "dead_lettered", "failed")
KINDS = ("o", "t", "r", "w", "b")
TOTALS = "a"
PER_QUEUE = "q"
OTHER_TENANT = "other"
# Upper bounds (ms) of the coarse histogram buckets; the last bucket holds everything above.
# Coarse on purpose: a bucket is a hash field per minute, and p50/p95/p99 need only be close.
BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000)

_SCRIPT = LuaScript.load(Path(__file__).parent / "history.lua")
_SUM = LuaScript.load(Path(__file__).parent / "history_sum.lua")


@dataclass(frozen=True, slots=True)
class Finished:
    """One job's attempt as the history counts it. ``outcome`` None: ran but not finished (revoked);
    ``runtime_ms`` None: never ran (dead-lettered on arrival); ``wait_ms`` None: unknown."""

    at: float
    queue: str
    actor: str
    tenant: str
    level: str
    outcome: str | None
    wait_ms: float | None
    runtime_ms: float | None


class Attempt(NamedTuple):
    """An attempt as a worker thread queues it: nothing derived yet, so the job's thread pays a
    tuple; queue, tenant, level and times are worked out in the flush (:meth:`HistoryStore.attempts_call`)."""

    ended_at: float  # Unix s
    started_at: float | None  # Unix s; None: never ran
    queue_name: str
    actor: str
    options: Mapping[str, Any]
    enqueued_ms: int
    outcome: str | None


def bucket_of(ms: float) -> int:
    """The histogram bucket index of a duration in ms (``len(BOUNDS_MS)`` above the last bound)."""
    return bisect.bisect_left(BOUNDS_MS, ms)


class HistoryStore:
    """The history buckets of one namespace: written by workers and the maintenance job, read by ``ops/history.py``."""

    def __init__(self, client: redis.Redis, namespace: str, *, max_tenants: int = 100, ttl: int = TTL) -> None:
        self.client = client
        self.namespace = namespace
        self.max_tenants = max_tenants
        self.ttl = ttl
        self._tenants: set[str] = set()
        self._tenants_lock = threading.Lock()

    def key(self, kind: str, minute: int) -> str:
        return f"{{{self.namespace}:hist}}:{kind}:{minute}"

    def add_call(self, finished: Iterable[Finished]) -> ScriptCall | None:
        """One ``history.lua`` call adding ``finished`` to their minutes' buckets; None for nothing."""
        increments = _Increments()
        for job in finished:
            increments.count(
                int(job.at // 60),
                job.queue,
                job.actor,
                tenant=job.tenant,
                level=job.level,
                outcome=job.outcome,
                wait_ms=job.wait_ms,
                runtime_ms=job.runtime_ms,
            )
        return self._call(increments)

    def attempts_call(self, attempts: Iterable[Attempt]) -> ScriptCall | None:
        """``add_call`` for attempts as a worker queued them (the status writer's flush)."""
        increments = _Increments()
        for ended, started, queue_name, actor, options, enqueued_ms, outcome in attempts:
            wait_ms = runtime_ms = None
            if started is not None:
                since = max(int(enqueued_ms), int(options.get("eta", 0)))
                wait_ms = max(0.0, started * 1000 - since)
                runtime_ms = max(0.0, (ended - started) * 1000)
            queue = queue_name[:-3] if queue_name.endswith((".DQ", ".XQ")) else queue_name
            increments.count(
                int(ended // 60),
                queue,
                actor,
                tenant=tenant_of(options),
                level=_level_name(options.get("priority_level")),
                outcome=outcome,
                wait_ms=wait_ms,
                runtime_ms=runtime_ms,
            )
        return self._call(increments)

    def _call(self, increments: _Increments) -> ScriptCall | None:
        buckets = increments.fields(self._tenant)
        if not buckets:
            return None
        args: list[str | int] = [self.ttl]
        for fields in buckets.values():
            args.append(len(fields))
            for field, amount in fields.items():
                args += [field, amount]
        return ScriptCall(_SCRIPT, [self.key(kind, minute) for kind, minute in buckets], args)

    def add(self, finished: Iterable[Finished]) -> None:
        """``add_call`` run alone (one round trip), for callers without a pipeline of their own."""
        call = self.add_call(finished)
        if call is not None:
            run_scripts(self.client, [call])

    def sample_backlog(self, depths: Mapping[tuple[str, str], int], minute: int) -> None:
        """Record messages waiting per (queue, level) at ``minute`` (the maintenance job's sample)."""
        if not depths:
            return
        totals: dict[str, int] = {}
        for (_queue, level), depth in depths.items():
            totals[f"b|{level}"] = totals.get(f"b|{level}", 0) + depth
        key, totals_key = self.key("b", minute), self.key(TOTALS, minute)
        with self.client.pipeline(transaction=True) as pipe:  # one hash tag: one slot
            pipe.hset(key, mapping={f"{queue}|{level}": depth for (queue, level), depth in depths.items()})
            pipe.hset(totals_key, mapping=totals)  # type: ignore[arg-type]
            pipe.expire(key, self.ttl)
            pipe.expire(totals_key, self.ttl)
            pipe.execute()

    def read(self, kind: str, minutes: Sequence[int]) -> list[dict[str, int]]:
        """The ``kind`` bucket of each of ``minutes`` (empty when none was kept), in one round trip."""
        with self.client.pipeline(transaction=False) as pipe:
            for minute in minutes:
                pipe.hgetall(self.key(kind, minute))
            replies = pipe.execute()
        return [{_text(field): int(value) for field, value in reply.items()} for reply in replies]

    def sums(self, kinds: Sequence[str], minutes: Sequence[int]) -> list[dict[str, int]]:
        """Each of ``kinds`` summed over ``minutes`` on the server, field by field, in one round trip."""
        calls = [ScriptCall(_SUM, [self.key(kind, minute) for minute in minutes], []) for kind in kinds]
        replies = run_scripts(self.client, calls)
        return [{_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)} for flat in replies]

    def _tenant(self, tenant: str) -> str:
        if tenant in self._tenants:
            return tenant
        with self._tenants_lock:
            if len(self._tenants) < self.max_tenants:
                self._tenants.add(tenant)
                return tenant
        return OTHER_TENANT


class _Increments:
    """One flush's attempts grouped by everything a field depends on, so the fields (and their
    f-strings) are made once per group, not once per job."""

    def __init__(self) -> None:
        # (minute, queue, actor, tenant, level, outcome, wait bucket, run bucket) -> [count, wait ms, run ms]
        self.groups: dict[tuple[int, str, str, str, str, str | None, int | None, int | None], list[float]] = {}

    def count(
        self,
        minute: int,
        queue: str,
        actor: str,
        *,
        tenant: str,
        level: str,
        outcome: str | None,
        wait_ms: float | None,
        runtime_ms: float | None,
    ) -> None:
        wait_bucket = None if wait_ms is None else bisect.bisect_left(BOUNDS_MS, wait_ms)
        run_bucket = None if runtime_ms is None else bisect.bisect_left(BOUNDS_MS, runtime_ms)
        key = (minute, queue, actor, tenant, level, outcome, wait_bucket, run_bucket)
        group = self.groups.get(key)
        if group is None:
            self.groups[key] = [1, wait_ms or 0.0, runtime_ms or 0.0]
        else:
            group[0] += 1
            group[1] += wait_ms or 0.0
            group[2] += runtime_ms or 0.0

    def fields(self, tenant_label: Callable[[str], str]) -> dict[tuple[str, int], dict[str, int]]:
        """Increments per bucket (kind, minute) and field; sums of ms rounded once per field."""
        buckets: dict[tuple[str, int], dict[str, float]] = {}

        def add(kind: str, minute: int, field: str, amount: float) -> None:
            fields = buckets.setdefault((kind, minute), {})
            fields[field] = fields.get(field, 0) + amount

        def observe(kind: str, minute: int, prefix: str, *, count: float, total: float, bucket: int) -> None:
            add(kind, minute, f"{prefix}|n", count)
            add(kind, minute, f"{prefix}|s", total)
            add(kind, minute, f"{prefix}|h{bucket}", count)

        for (minute, queue, actor, tenant, level, outcome, wait_bucket, run_bucket), group in self.groups.items():
            count, wait_total, run_total = group
            if outcome is not None:
                add("o", minute, f"{queue}|{actor}|{outcome}", count)
                add(TOTALS, minute, f"o|{outcome}", count)
                add(PER_QUEUE, minute, f"{queue}|o|{outcome}", count)
            if run_bucket is not None:
                add("t", minute, f"{queue}|{tenant_label(tenant)}", count)
                observe("r", minute, f"{queue}|{actor}", count=count, total=run_total, bucket=run_bucket)
            if wait_bucket is not None:
                for kind, prefix in (("w", f"{queue}|{level}"), (TOTALS, f"w|{level}"), (PER_QUEUE, f"{queue}|w")):
                    observe(kind, minute, prefix, count=count, total=wait_total, bucket=wait_bucket)
        return {
            bucket: {field: round(amount) for field, amount in fields.items()} for bucket, fields in buckets.items()
        }


def _level_name(value: object) -> str:
    """The level name of a message's ``priority_level`` option; NORMAL when it has none."""
    return Priority.NORMAL.name if value is None else (level_name(value) or "UNKNOWN")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
