"""The dead-letter store: every failed message as a searchable ``DeadLetter`` in the state-store Redis.

Keys (``P`` = ``{namespace}:dlq:{{namespace}}:``; the braces are a Redis Cluster hash tag, so every
key of the store sits in one slot and one script call may touch any of them):

=====================================  =======  ==============================================
key                                    type     content
=====================================  =======  ==============================================
``P rec:<id>``                         hash     ``data`` (the record as JSON), ``at`` (failed
                                                at, ms), ``dim:<name>`` (its index values)
``P time``                             zset     id → failed_at ms: every record, oldest first
``P idx:<dim>:<value>``                zset     id → failed_at ms, for dim in queue, actor,
                                                error_type, fingerprint, tenant, reason
``P keys:<dim>``                       zset     value → latest failed_at ms of that value
                                                (may lag after removals; never misses one)
``P trend:<dim>:<value>``              hash     epoch day → 24 big-endian uint32: records of
                                                that value per hour of the day (no all-zero days)
=====================================  =======  ==============================================

No key has a TTL: records leave by retention (``purge_expired``, age > ``FAIRWAY_DLQ__RETENTION_DAYS``),
by the ``FAIRWAY_DLQ__MAX_RECORDS`` cap (oldest evicted by the write that exceeds it), by
``purge`` and by ``requeue``; index, key and trend entries leave with their record in the same
script (``dead_letters.lua``), so ``stats`` counts exactly the records ``list`` shows.

Listing by any one dimension and a time range is a range read of its index (the smallest one
that applies); further filters are checked on the records read. Statistics take counts, first
and last seen from the index of each value and trends from its hour counters, in one read-only
script (``dead_letters_stats.lua``) whose reply is one string of counters per value, not an element
per hour (the hour holding ``since`` is counted whole; buckets narrower than an hour are read from
the index instead). No list, stats or retention call walks the store: each reads the index
ranges, values and days it answers with (export reads all it exports, a page at a time).

When the state store cannot be reached, records are appended to a spool file in
``FAIRWAY_DATA_DIR`` (``dead-letters-<namespace>.spool.jsonl``, fsynced, under a file lock) and
written to the store by the next successful write, by ``replay_spool`` or by ``purge_expired``.
Writing is idempotent by message id, so a replay that is interrupted can simply run again.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TextIO

import dramatiq
import redis

from ..connections import state_store_client
from ..encryption.keyring import Keyring
from ..errors import FairwayError
from ..outage import OutageWarning
from ..priority import Priority
from ..settings import Settings, load_settings
from .dead_letter_export import export_records
from .dead_letter_model import DIMENSIONS, DeadLetter, DeadLetterFilter, Dimension, Reason
from .dead_letter_requeue import (
    REFUSED_BY_BROKER,
    RedactedRecords,
    RequeuedMessage,
    RequeueResult,
    SkippedRecord,
    requeue_records,
)
from .dead_letter_spool import Spool
from .dead_letter_stats import COUNTER_BUCKET, Bucket, DeadLetterStats, rows_from_counters, rows_from_index
from .scripts import LuaScript, ScriptCall, run_scripts

# The record, its stats, requeue and spool live in their own modules; imported from here as before.
__all__ = [
    "COUNTER_BUCKET",
    "DIMENSIONS",
    "REFUSED_BY_BROKER",
    "Bucket",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterStats",
    "DeadLetterStore",
    "Dimension",
    "NothingSelected",
    "Reason",
    "RedactedRecords",
    "RequeueResult",
    "RequeuedMessage",
    "SkippedRecord",
    "Spool",
    "purge_expired",
]

logger = logging.getLogger(__name__)

_PAGE = 500
_SCRIPT = LuaScript.load(Path(__file__).with_name("dead_letters.lua"))
_STATS_SCRIPT = LuaScript.load(Path(__file__).with_name("dead_letters_stats.lua"))


class NothingSelected(FairwayError):
    """Requeue or purge was called without ids or filters (they never act on everything by default)."""


class DeadLetterStore:
    """Dead-letter records in the state store; see the module docstring for keys and rules."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: redis.Redis | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or load_settings()
        self.client = client or state_store_client(self.settings, socket_connect_timeout=2.0, socket_timeout=10.0)
        self.clock = clock
        namespace = self.settings.namespace
        self.prefix = f"{namespace}:dlq:{{{namespace}}}:"
        self.spool = Spool(self.settings.data_dir / f"dead-letters-{namespace}.spool.jsonl")
        self._unreachable = OutageWarning(logger)

    # -- writing ---------------------------------------------------------------------------------

    def add(self, record: DeadLetter) -> Literal["stored", "spooled"]:
        """Keep ``record`` in the store, or in the local spool while the store is unreachable.

        Raises ``OSError`` when neither could be written: the caller must then not ack the message.
        """
        try:
            self._write([self._add_call(record)])
        except (redis.ConnectionError, redis.TimeoutError) as error:
            self.spool.append(record)
            self._warn_unreachable(error)
            return "spooled"
        if self.spool.pending():
            self.replay_spool()
        return "stored"

    def add_many(self, records: Iterable[DeadLetter], batch: int = _PAGE) -> int:
        """Write ``records`` through the same script as ``add``, ``batch`` script calls per round trip.

        For bulk loads and spool replay: there is no spool fallback, a connection error propagates.
        Records already stored are left as they are. Returns the number of records that were new.
        """
        stored, calls = 0, []
        for position, record in enumerate(records, start=1):
            calls.append(self._add_call(record))
            if position % batch == 0:
                stored += sum(int(new) for new, _evicted in self._write(calls))
                calls = []
        return stored + sum(int(new) for new, _evicted in self._write(calls))

    def _write(self, calls: list[ScriptCall]) -> list[Any]:
        """Run record writes, waiting for ``FAIRWAY_REDIS_WAIT_REPLICAS`` replicas."""
        return run_scripts(self.client, calls, replicas=self.settings.redis_wait_replicas)

    def replay_spool(self) -> int:
        """Write the spooled records into the store; the number replayed (0 if the store is still down)."""
        try:
            return self.spool.drain(self.add_many)
        except redis.RedisError as error:
            # The spool is kept whole and tried again later; the write that triggered the replay
            # has already succeeded and must not fail because of an older record.
            self._warn_unreachable(error)
            return 0

    def _add_call(self, record: DeadLetter) -> ScriptCall:
        """The ``add`` script call that stores ``record`` (``add_many`` batches them)."""
        dims: builtins.list[str] = []
        for dim in DIMENSIONS:
            if value := record.dimension(dim):
                dims += [dim, value]
        return ScriptCall(
            _SCRIPT,
            keys=[self.prefix + "time"],
            args=[
                "add",
                self.prefix,
                _millis(COUNTER_BUCKET),
                self.settings.dlq.max_records,
                record.id,
                _epoch_ms(record.failed_at),
                record.model_dump_json(),
                *dims,
            ],
        )

    def _remove(self, ids: builtins.list[str]) -> int:
        removed = 0
        for start in range(0, len(ids), _PAGE):
            removed += int(
                _SCRIPT.run(
                    self.client,
                    keys=[self.prefix + "time"],
                    args=["remove", self.prefix, _millis(COUNTER_BUCKET), *ids[start : start + _PAGE]],
                )
            )
        return removed

    def rewrite(self, records: builtins.list[DeadLetter]) -> int:
        """Replace the stored data of ``records`` (same ids, same index values: a re-sealed payload);
        a record removed meanwhile is not brought back. Returns the number rewritten."""
        rewritten = 0
        for start in range(0, len(records), _PAGE):
            pairs = [item for r in records[start : start + _PAGE] for item in (r.id, r.model_dump_json())]
            rewritten += int(
                _SCRIPT.run(
                    self.client,
                    keys=[self.prefix + "time"],
                    args=["rewrite", self.prefix, _millis(COUNTER_BUCKET), *pairs],
                )
            )
        return rewritten

    def _warn_unreachable(self, error: Exception) -> None:
        self._unreachable.warn(
            "Dead-letter store unreachable (%s); records go to the spool %s until it returns.",
            type(error).__name__,
            self.spool.path,
        )

    # -- reading ---------------------------------------------------------------------------------

    def get(self, record_id: str) -> DeadLetter | None:
        data = self.client.hget(self.prefix + f"rec:{record_id}", "data")
        return DeadLetter.model_validate_json(data) if data else None

    def list(self, filters: DeadLetterFilter | None = None, limit: int = 50) -> builtins.list[DeadLetter]:
        """The newest ``limit`` records matching ``filters``, newest first."""
        filters = filters or DeadLetterFilter()
        # When one index answers every filter (a time range and at most one equality), its first
        # ``limit`` ids are the answer: reading a whole page would parse records nobody asked for.
        page = min(limit, _PAGE) if len(filters.equalities()) <= 1 else _PAGE
        return builtins.list(itertools.islice(self.iter_records(filters, page), limit))

    def iter_records(self, filters: DeadLetterFilter | None = None, page_size: int = _PAGE) -> Iterator[DeadLetter]:
        """Every record matching ``filters``, newest first, read ``page_size`` at a time (constant memory)."""
        filters = filters or DeadLetterFilter()
        equalities = filters.equalities()
        for page in self._pages(filters, page_size):
            # One index answered; the other equalities are checked on the records' small index
            # fields first, so that only matching records are fetched and parsed.
            for data in self._read(self._having(page, equalities) if len(equalities) > 1 else page):
                if data is None:
                    continue
                record = DeadLetter.model_validate_json(data)
                if filters.matches(record):
                    yield record

    def count(self) -> int:
        return int(self.client.zcard(self.prefix + "time"))

    def _having(self, ids: builtins.list[str], equalities: dict[Dimension, str]) -> builtins.list[str]:
        """The ``ids`` whose records have every one of ``equalities`` (read from their ``dim:`` fields)."""
        fields = [f"dim:{dim}" for dim in equalities]
        wanted = [value.encode() for value in equalities.values()]
        pipe = self.client.pipeline(transaction=False)
        for record_id in ids:
            pipe.hmget(self.prefix + f"rec:{record_id}", fields)
        return [record_id for record_id, values in zip(ids, pipe.execute(), strict=True) if values == wanted]

    def _read(self, ids: builtins.list[str]) -> builtins.list[bytes | None]:
        pipe = self.client.pipeline(transaction=False)
        for record_id in ids:
            pipe.hget(self.prefix + f"rec:{record_id}", "data")
        return pipe.execute()

    def _pages(self, filters: DeadLetterFilter, page_size: int) -> Iterator[builtins.list[str]]:
        """Pages of ids, newest first, from the smallest index that can answer ``filters``."""
        low = _score(filters.since, "-inf")
        high = _score(filters.until, "+inf")
        candidates = [self.prefix + f"idx:{dim}:{value}" for dim, value in filters.equalities().items()]
        if candidates:
            pipe = self.client.pipeline(transaction=False)
            for key in candidates:
                pipe.zcount(key, low, high)
            sizes = pipe.execute()
            index = min(zip(sizes, candidates, strict=True))[1]
        else:
            index = self.prefix + "time"
        # Walk by score, not by offset (an offset walk costs O(offset) per page), and stay correct
        # when the caller removes what it was given: after a page ending at score ``last``, the
        # other ids at exactly ``last`` are fetched on their own, then the walk goes on below it.
        top: str = high
        while True:
            rows = self.client.zrevrangebyscore(index, top, low, start=0, num=page_size, withscores=True)
            if not rows:
                return
            page = [member.decode() for member, _ in rows]
            yield page
            if len(rows) < page_size:
                return
            last = int(rows[-1][1])
            seen = set(page)
            ties = [m.decode() for m in self.client.zrangebyscore(index, last, last) if m.decode() not in seen]
            if ties:
                yield ties
            top = f"({last}"

    # -- statistics ------------------------------------------------------------------------------

    def stats(
        self,
        by: Dimension = "fingerprint",
        since: timedelta | None = None,
        bucket: timedelta = COUNTER_BUCKET,
    ) -> builtins.list[DeadLetterStats]:
        """Records per value of ``by`` failed in the last ``since`` (all when None), most frequent first."""
        if bucket < timedelta(seconds=1):
            raise ValueError(f"bucket: {bucket} is shorter than one second")
        low = "-inf" if since is None else _millis(timedelta(seconds=self.clock()) - since)
        width = int(bucket.total_seconds())
        hour = int(COUNTER_BUCKET.total_seconds())
        if width % hour:
            rows = self._stats_from_index(by, low, width)
        else:
            reply = _STATS_SCRIPT.run(self.client, [self.prefix + f"keys:{by}"], [self.prefix, by, low, hour * 1000])
            # The hour that holds ``since`` is counted whole: counters are kept per hour.
            first_hour = 0 if low == "-inf" else int(low) // 1000 // hour * hour
            rows = rows_from_counters(reply, first_hour, width)
        rows.sort(key=lambda row: (-row.count, row.key))
        return rows

    def _stats_from_index(self, by: Dimension, low: str | int, width: int) -> builtins.list[DeadLetterStats]:
        """Rows with buckets narrower than the counters: every record's time is read from the indexes."""
        values = [v.decode() for v in self.client.zrangebyscore(self.prefix + f"keys:{by}", low, "+inf")]
        pipe = self.client.pipeline(transaction=False)
        for value in values:
            index = self.prefix + f"idx:{by}:{value}"
            pipe.zrangebyscore(index, low, "+inf", withscores=True)
        return rows_from_index(values, pipe.execute(), width)

    # -- export ----------------------------------------------------------------------------------

    def export(self, out: TextIO, fmt: Literal["json", "csv"], filters: DeadLetterFilter | None = None) -> int:
        """Write matching records to ``out`` as JSON Lines or CSV, newest first; the number written."""
        return export_records(self.iter_records(filters), out, fmt)

    # -- requeue and purge -----------------------------------------------------------------------

    def select(self, ids: Iterable[str] = (), filters: DeadLetterFilter | None = None) -> Iterator[DeadLetter]:
        """The records named by ``ids``, or else those matching ``filters``; never everything by default."""
        ids = list(ids)
        if ids:
            for page_start in range(0, len(ids), _PAGE):
                page = ids[page_start : page_start + _PAGE]
                for record_id, data in zip(page, self._read(page), strict=True):
                    if data is None:
                        raise FairwayError(f"no dead letter with id {record_id!r}")
                    yield DeadLetter.model_validate_json(data)
            return
        if filters is None or filters.is_empty():
            raise NothingSelected("name record ids or give at least one filter")
        yield from self.iter_records(filters)

    def requeue(
        self,
        broker: dramatiq.Broker,
        ids: Iterable[str] = (),
        filters: DeadLetterFilter | None = None,
        *,
        priority: Priority | str | int = Priority.HIGH,
        rate: float | None = None,
        dry_run: bool = False,
        allow_redacted: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> RequeueResult:
        """Send the selected records' messages again and remove the records (``requeue_records``)."""
        return requeue_records(
            self.select(ids, filters),
            broker,
            lambda record_id: self._remove([record_id]),
            priority=priority,
            rate=rate,
            dry_run=dry_run,
            allow_redacted=allow_redacted,
            sleep=sleep,
            keyring=Keyring.from_settings(self.settings),
        )

    def purge(
        self,
        ids: Iterable[str] = (),
        filters: DeadLetterFilter | None = None,
        *,
        older_than: timedelta | None = None,
    ) -> int:
        """Remove the records named by ``ids``, matching ``filters``, or older than ``older_than``."""
        if older_than is not None:
            cutoff = datetime.fromtimestamp(self.clock(), UTC) - older_than
            filters = (filters or DeadLetterFilter()).model_copy(update={"until": cutoff})
        removed = 0
        batch: builtins.list[str] = []
        for record in self.select(ids, filters):
            batch.append(record.id)
            if len(batch) >= _PAGE:
                removed += self._remove(batch)
                batch = []
        return removed + self._remove(batch)

    def purge_expired(self) -> int:
        """Apply retention: drop records older than the retention period, then the oldest over the cap."""
        dlq = self.settings.dlq
        time_key = self.prefix + "time"
        cutoff = _millis(timedelta(seconds=self.clock()) - timedelta(days=dlq.retention_days))
        removed = 0
        while ids := [m.decode() for m in self.client.zrangebyscore(time_key, "-inf", f"({cutoff}", 0, _PAGE)]:
            removed += self._remove(ids)
        excess = int(self.client.zcard(time_key)) - dlq.max_records
        if excess > 0:
            removed += self._remove([m.decode() for m in self.client.zrange(time_key, 0, excess - 1)])
        return removed


def purge_expired(settings: Settings | None = None) -> int:
    """The periodic retention job: replay any spool, then drop records past retention."""
    store = DeadLetterStore(settings)
    store.replay_spool()
    return store.purge_expired()


def _millis(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _score(moment: datetime | None, default: str) -> str:
    return default if moment is None else str(_epoch_ms(moment))
