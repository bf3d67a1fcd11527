"""Live worker processes in the state store, for ``fairway workers`` and the dashboard.

Key (``{namespace}`` is ``FAIRWAY_NAMESPACE``):

``{namespace}:workers``
    Hash: worker id → JSON :class:`WorkerInfo`, rewritten by each worker process every
    :data:`BEAT_INTERVAL` seconds and deleted when it stops. No TTL on the hash: an entry whose
    heartbeat is older than ``FAIRWAY_HEARTBEAT_TIMEOUT`` belongs to a process that died without
    stopping; it is no longer live, but kept :data:`STALE_KEPT` seconds more so the dashboard can
    mark it (:meth:`WorkerRegistry.stale`) rather than silently drop it, then dropped by the next
    read.

Independent of the broker, so it lists RabbitMQ workers as well as Redis ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import redis
from pydantic import BaseModel, ValidationError

from ..connections import state_store_client
from ..settings import Settings

BEAT_INTERVAL = 5.0
# How long past the heartbeat timeout a silent worker is still listed as stale.
STALE_KEPT = 3600.0


class WorkerInfo(BaseModel):
    """One worker process, as it last reported itself."""

    id: str
    host: str
    pid: int
    queues: list[str]
    threads: int
    in_flight: int
    processed: int
    started_at: dt.datetime
    beat_at: dt.datetime
    # Where this process's ``dramatiq`` run serves Prometheus metrics, ``unavailable: <why>`` when
    # its exporter could not listen, None when unknown (an in-process worker, an older worker).
    metrics: str | None = None
    # Resident memory at the last report, and the limits after which the process is replaced
    # (FAIRWAY_WORKERS__MAX_TASKS / __MAX_MEMORY_MB; None: no limit, or an older worker).
    resident_mb: float | None = None
    max_tasks: int | None = None
    max_memory_mb: int | None = None

    def as_json(self, now: dt.datetime) -> dict[str, object]:
        """The ``fairway workers --json`` row: the report plus its heartbeat age in seconds."""
        age = max(0.0, (now - self.beat_at).total_seconds())  # a beat written after ``now`` was read
        return {**self.model_dump(mode="json"), "heartbeat_age": round(age, 3)}


class WorkerRegistry:
    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        timeout: float = 60.0,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.client = client
        self.key = f"{namespace}:workers"
        self.timeout = timeout
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerRegistry:
        return cls(state_store_client(settings), settings.namespace, timeout=settings.heartbeat_timeout)

    def beat(self, info: WorkerInfo) -> None:
        self.client.hset(self.key, info.id, info.model_dump_json())

    def remove(self, worker_id: str) -> None:
        self.client.hdel(self.key, worker_id)

    def live(self) -> list[WorkerInfo]:
        """Workers whose heartbeat is fresh, oldest first; long-dead entries are dropped on the way."""
        return self._read()[0]

    def stale(self) -> list[WorkerInfo]:
        """Workers whose heartbeat stopped less than ``STALE_KEPT`` seconds past the timeout, oldest first."""
        return self._read()[1]

    def _read(self) -> tuple[list[WorkerInfo], list[WorkerInfo]]:
        now = self.clock()
        live, stale, dead = [], [], []
        for worker_id, raw in self.client.hgetall(self.key).items():
            try:
                info = WorkerInfo.model_validate_json(raw)
            except ValidationError:
                dead.append(worker_id)
                continue
            silent = (now - info.beat_at).total_seconds()
            if silent > self.timeout + STALE_KEPT:
                dead.append(worker_id)
            elif silent > self.timeout:
                stale.append(info)
            else:
                live.append(info)
        if dead:
            self.client.hdel(self.key, *dead)
        return sorted(live, key=lambda info: info.started_at), sorted(stale, key=lambda info: info.started_at)
