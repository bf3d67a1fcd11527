"""Queued jobs selected by what their status records say, and revoked in bulk (a bulk cancel).

The status record of a job (``{namespace}:job:{message_id}``, :mod:`.status`) keeps its queue,
actor, state and, since they are written with PENDING, its tenant, level and enqueue time. A bulk
cancel reads every record of the namespace (SCAN with a MATCH pattern, ``SCAN_COUNT`` keys a
step, then one pipeline of HGET state per step, and HMGET of the other fields for the queued
ones): the cost grows with the records kept (an hour of successes, a week of the rest), never with
the queues' length, and it runs only when an operator asks, never on a hot path
(``bench/bulk_cancel.py``: docs/benchmarks.md). A queue's own layout cannot serve here: RabbitMQ
cannot list a queue's messages without taking them, and the Redis layout differs by broker.

Queued means PENDING or RETRY (waiting to run again). Revoking is one ``status_revoke.lua`` call
per job (one key, one hash slot), pipelined, then the ids go to the cancelled-jobs stream that
workers follow, so a worker skips each of them when it takes it (``middlewares/status.py``).
Records written by a version older than this one have no tenant, level or enqueue time: they
match only filters on queue and actor.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .scripts import LuaScript, ScriptCall, run_scripts
from .status import CANCELLED_KEPT, JobStatusStore
from .status_model import JobState, iso_from_datetime

_SCRIPTS = Path(__file__).parent
SCAN_COUNT = 1000
REVOKES_PER_PIPELINE = 500
_QUEUED = frozenset({JobState.PENDING.value, JobState.RETRY.value})
_FIELDS = ("state", "queue", "actor", "tenant", "level", "enqueued")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class QueuedJobFilter(BaseModel):
    """Which queued jobs a bulk cancel selects; every given field must match."""

    model_config = ConfigDict(frozen=True)

    queue: str | None = None
    actor: str | None = None
    tenant: str | None = None
    level: int | None = None
    before: dt.datetime | None = None

    def is_empty(self) -> bool:
        return all(value is None for value in (self.queue, self.actor, self.tenant, self.level, self.before))

    def as_json(self) -> dict[str, Any]:
        """The given fields only, as the audit entry and ``--json`` show them (level as its number)."""
        shown = self.model_dump(exclude_none=True)
        if self.before is not None:
            shown["before"] = iso_from_datetime(self.before)
        return shown

    def matches(self, fields: dict[str, str]) -> bool:
        if fields.get("state") not in _QUEUED:
            return False
        for name in ("queue", "actor", "tenant"):
            wanted = getattr(self, name)
            if wanted is not None and fields.get(name) != wanted:
                return False
        if self.level is not None and fields.get("level") != str(self.level):
            return False
        # ISO times of one fixed shape (``2026-12-05T08:16:11.752Z``) compare as strings.
        return self.before is None or fields.get("enqueued", "~") < iso_from_datetime(self.before)


@dataclass(frozen=True)
class QueuedJob:
    id: str
    state: str
    queue: str
    actor: str
    tenant: str
    level: str
    enqueued: str


class QueuedJobs:
    """Finds queued jobs by a :class:`QueuedJobFilter` and revokes them (see the module docstring)."""

    def __init__(self, store: JobStatusStore) -> None:
        self.store = store
        self._revoke = LuaScript.load(_SCRIPTS / "status_revoke.lua")

    def find(self, selection: QueuedJobFilter) -> list[QueuedJob]:
        """Every queued job ``selection`` matches, in no particular order."""
        prefix = self.store.job_key("")
        pattern = _GLOB_SPECIAL.sub(r"\\\1", prefix) + "*"
        found: list[QueuedJob] = []
        batch: list[str] = []
        for key in self.store.client.scan_iter(match=pattern, count=SCAN_COUNT):
            batch.append(_text(key))
            if len(batch) >= SCAN_COUNT:
                found += self._matching(batch, prefix, selection)
                batch = []
        found += self._matching(batch, prefix, selection)
        return found

    def revoke(self, ids: list[str]) -> list[str]:
        """Mark each job REVOKED unless it left the queue meanwhile; the ids revoked."""
        at = self.store.now()
        revoked: list[str] = []
        for start in range(0, len(ids), REVOKES_PER_PIPELINE):
            chunk = ids[start : start + REVOKES_PER_PIPELINE]
            args = [at, self.store.failed_ttl, self.store.history_limit]
            calls = [ScriptCall(self._revoke, [self.store.job_key(job)], args) for job in chunk]
            replies = run_scripts(self.store.client, calls)
            revoked += [job for job, reply in zip(chunk, replies, strict=True) if int(reply) == 1]
        self._announce(revoked)
        return revoked

    def _matching(self, keys: list[str], prefix: str, selection: QueuedJobFilter) -> list[QueuedJob]:
        if not keys:
            return []
        # Most records are of finished jobs: their state alone rules them out, so the other fields
        # are read only for the queued ones (a fifth of the replies to parse).
        pipe = self.store.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "state")
        queued = [key for key, state in zip(keys, pipe.execute(), strict=True) if state and _text(state) in _QUEUED]
        if not queued:
            return []
        for key in queued:
            pipe.hmget(key, list(_FIELDS))
        matching = []
        for key, values in zip(queued, pipe.execute(), strict=True):
            fields = {name: _text(value) for name, value in zip(_FIELDS, values, strict=True) if value is not None}
            if selection.matches(fields):
                matching.append(QueuedJob(key.removeprefix(prefix), *(fields.get(name, "") for name in _FIELDS)))
        return matching

    def _announce(self, revoked: list[str]) -> None:
        # Workers follow this stream to skip cancelled jobs without a read per job. The cap leaves
        # room for this whole batch, so none of it is trimmed before workers read it; the next
        # single cancel trims the stream back to about CANCELLED_KEPT.
        kept = CANCELLED_KEPT + len(revoked)
        for start in range(0, len(revoked), REVOKES_PER_PIPELINE):
            pipe = self.store.client.pipeline(transaction=False)
            for job in revoked[start : start + REVOKES_PER_PIPELINE]:
                pipe.xadd(self.store.cancelled_key, {"id": job}, maxlen=kept, approximate=True)
            pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
