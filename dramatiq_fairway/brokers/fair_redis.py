"""``FairRedisBroker``: a RedisBroker that serves each queue fairly (docs/design.md).

Each queue keeps one FIFO per (priority level, tenant). A fetch picks CRITICAL first, then the
highest waiting level unless a lower waiting level was passed by three picks in a row, and inside
a level serves tenants by deficit round robin weighted by ``FAIRWAY_FAIRNESS__WEIGHTS``. A message
that waited ``FAIRWAY_FAIRNESS__MAX_WAIT`` seconds moves up one level (never above HIGH). A tenant
at its ``max_concurrency`` or out of tokens (``FAIRWAY_LIMITS__*``, ``fairway limits``) is left out
of the rounds until a slot frees or a token is due, keeping its deficit; its messages simply wait.
All of it happens in ``fair_redis.lua`` in O(levels + log tenants) per message.

It keeps Dramatiq's guarantees: prefetch, ack, nack to the dead messages (``.XQ``), requeue on
shutdown, delayed messages (``q.DQ`` is a plain FIFO), ``flush``, ``flush_all`` and ``join``.
Dead workers are found by heartbeat plus ``CLIENT LIST`` (``fair_redis_liveness.py``); a worker
fetches through :class:`~dramatiq_fairway.brokers.fair_redis_consumer.FairRedisConsumer`.

Keys (``ns`` is the broker namespace): everything of queue ``q`` under ``{ns:q}:*`` (listed in the
script's header; the limits' keys in ``store/limits.py``; one such prefix per partition with
``FAIRWAY_FAIRNESS__PARTITIONS``, ``store/partitions.py``), worker heartbeats
``{ns:workers}:heartbeats`` (zset id -> ms), the queues each worker consumes
``{ns:workers}:queues:<id>`` and the queues ever used ``{ns:workers}:known``.
Nothing expires by TTL: a dead worker's keys are deleted when it is recovered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from uuid import uuid4

import redis
from dramatiq import Message
from dramatiq.broker import Consumer
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, q_name
from dramatiq.errors import QueueJoinTimeout

from ..connections import named_client
from ..middlewares.message_size import encoded
from ..priority import Priority, level_of
from ..settings import Settings, load_settings
from ..store import limits, partitions, send_writes
from ..store.scripts import LuaScript, ScriptCall, run_scripts
from ..tenants import tenant_of
from .delivery import HoldsAtStart, held_copy
from .fair_redis_consumer import FairRedisConsumer
from .fair_redis_liveness import (  # noqa: F401 (the liveness constants' old import path)
    CLIENT_NAME_PREFIX,
    GONE_GRACE,
    HEARTBEAT_INTERVAL,
    STALE_AFTER,
    WorkerLiveness,
)
from .fair_redis_operations import QueueOperations
from .hooks import OverriddenHooks

logger = logging.getLogger(__name__)

SCRIPT = "\n".join(
    [limits.LIB, *((Path(__file__).parent / name).read_text() for name in ("fair_redis.lua", "fair_redis_adopt.lua"))]
)
_LUA = LuaScript.from_text(SCRIPT)
# Reasons the script gives for skipping a tenant, as metrics label them.
THROTTLE_REASONS = {b"c": "concurrency", b"r": "rate"}


class FairRedisBroker(QueueOperations, HoldsAtStart, OverriddenHooks, RedisBroker):
    """A RedisBroker with fair dispatch across priority levels and tenants.

    Parameters (besides RedisBroker's ``client``, ``url``, ``namespace``, ``middleware``,
    ``dead_message_ttl``, ...):
      settings: fairness weights, max wait, prefetch and heartbeat timeout; ``load_settings()``
        when omitted.
      clock: milliseconds since the epoch to give the script as "now"; None (the default) lets
        the script read the Redis server's ``TIME``. Tests set it to control aging.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        clock: Callable[[], int] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.settings = settings or load_settings()
        self.clock = clock
        self.client = named_client(self.client, CLIENT_NAME_PREFIX + self.broker_id)
        weights = self.settings.fairness.weights
        # DRR quantum = weight * scale, scaled so the lightest tenant still gets one message a turn.
        self.drr_scale = max(1.0, 1.0 / min(weights.values())) if weights else 1.0
        self.liveness = WorkerLiveness(self, _LUA)
        self._orphans: dict[str, list[str]] = {}
        # Broker ids this process holds per queue (fetched, not settled yet), and the queues whose
        # last fetch failed on the connection: that fetch may have run with its reply lost.
        self._held: dict[str, set[str]] = {}
        self._settling: dict[str, dict[str, list[str]]] = {}
        self._unsure: set[str] = set()
        self._lock = threading.Lock()
        self._weighted_queues: set[str] = set()
        self.tenant_limits = limits.TenantLimits(self.client, self.namespace, "redis")
        self._throttled: Counter[tuple[str, str, str]] = Counter()
        self._registered_queues: set[str] = set()
        self._consumed: set[str] = set()
        self.partition_tags = partitions.PartitionTags(self.client, self.namespace)
        self._turns: dict[str, partitions.PartitionTurns] = {}

    def __getattr__(self, name: str) -> Any:
        # RedisBroker routes every ``do_*`` attribute to Dramatiq's own script, whose keys are not
        # ours: refuse them so nothing reaches it by accident.
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @property
    def consumer_class(self) -> type[Consumer]:
        return FairRedisConsumer

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        canonical = q_name(queue_name)
        self._register(canonical)
        self._consumed.add(canonical)
        self.client.sadd(self._workers_key(f"queues:{self.broker_id}"), canonical)
        if queue_name == canonical and self.settings.fairness.prefetch is not None:
            # Dramatiq asks for 2 x threads; keep the running ones plus the configured extra.
            prefetch = max(1, prefetch // 2 + self.settings.fairness.prefetch)
        self.liveness.start()
        return FairRedisConsumer(self, queue_name, prefetch, timeout)

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        queue_name = q_name(message.queue_name)
        options: dict[str, Any] = {"redis_message_id": str(uuid4())}
        if delay is not None:
            queue_name = dq_name(queue_name)
            options["eta"] = self._now_ms() + delay
        message = message.copy(queue_name=queue_name, options=options)
        with send_writes.collecting(self.client) as writes:
            self.emit_before("enqueue", message, delay)
            call = self.enqueue_call(message, encoded(message))
            replies = run_scripts(self.client, [call], replicas=self._replicas(), best_effort=writes.calls)
            writes.report(replies[1:])
            self.emit_after("enqueue", message, delay)
        return message

    def enqueue_many(self, messages: Iterable[Message]) -> list[Message]:
        """Enqueue ``messages`` (no delay) in one round trip, firing the same hooks as ``enqueue``."""
        enqueued, calls = [], []
        for original in messages:
            message = original.copy(queue_name=q_name(original.queue_name), options={"redis_message_id": str(uuid4())})
            self.emit_before("enqueue", message, None)
            calls.append(self.enqueue_call(message, message.encode()))
            enqueued.append(message)
        run_scripts(self.client, calls, replicas=self._replicas())
        for message in enqueued:
            self.emit_after("enqueue", message, None)
        return enqueued

    def push_body(self, queue_name: str, body: bytes, *, level: Priority, tenant: str) -> str:
        """Store ``body`` on ``queue_name`` as it is, firing no hook; return its broker id.

        For moving bodies kept elsewhere (stock Dramatiq's keys) into the fair queues.
        """
        index = self._partition_of_tenant(tenant)
        rid = partitions.rid_in_partition(index, str(uuid4()))
        self._call(queue_name, "enqueue", rid, body, int(level), tenant, partition=index)
        return rid

    def adopt(
        self, queue_name: str, part: str, stock_keys: tuple[str, str], entries: Sequence[tuple[str, Priority, str]]
    ) -> int:
        """Move stock RedisBroker messages into ``queue_name``, each atomically (``fair_redis_adopt.lua``).

        ``part`` is ``q`` (ready), ``dq`` (delayed) or ``xq`` (dead); ``stock_keys`` the stock
        ids (list or zset) and their bodies (hash); ``entries`` (stock id, level, tenant). Returns
        how many moved: an id no longer waiting in the stock keys is left alone.
        """
        self._register(q_name(queue_name))
        prefixes = self._prefixes(queue_name)
        placed: dict[int, list[tuple[str, Priority, str]]] = {}
        for entry in entries:
            placed.setdefault(self._partition_of_tenant(entry[2]), []).append(entry)
        calls, head = [], ["adopt", self._clock_arg(), self.broker_id, self._max_wait_ms(), part]
        for index, batch in sorted(placed.items()):
            args = [*head, partitions.rid_in_partition(index, "")]
            args += [value for rid, level, tenant in batch for value in (rid, int(level), tenant)]
            calls.append(ScriptCall(_LUA, [prefixes[index], *stock_keys], args))
        return sum(int(moved) for moved in run_scripts(self.client, calls))

    def hold_back(self, message: Message, delay: int) -> None:
        """Move ``message`` (held by this worker) to its delay queue for ``delay`` ms, firing no hook."""
        canonical = q_name(message.queue_name)
        rid = message.options["redis_message_id"]
        index = partitions.partition_of_rid(rid)
        waiting = held_copy(message, delay).copy(
            queue_name=dq_name(canonical),
            options={"redis_message_id": partitions.rid_in_partition(index, str(uuid4()))},
        )
        self._call(canonical, "hold", rid, waiting.options["redis_message_id"], waiting.encode(), partition=index)
        with self._lock:
            self._held.get(canonical, set()).discard(message.options["redis_message_id"])

    def flush(self, queue_name: str) -> None:
        self._on_every_partition(q_name(queue_name), "purge")

    def join(self, queue_name: str, *, interval: int = 100, timeout: int | None = None) -> None:
        deadline = timeout and time.monotonic() + timeout / 1000
        while self.join_size(queue_name):
            if deadline and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            time.sleep(interval / 1000)

    def close(self) -> None:
        self.liveness.stop()
        super().close()

    # Script calls (docs/design.md, "Partitions": each call touches one partition's slot).

    def _script_call(self, queue_name: str, command: str, *args: Any, partition: int = 0) -> ScriptCall:
        part = "dq" if queue_name != q_name(queue_name) else "q"
        args = (command, self._clock_arg(), self.broker_id, self._max_wait_ms(), part, *args)
        # Partition 0 is the queue's own prefix: no need to read the stored partitions for it, so
        # with one partition a send or a settle makes no round trip more than before.
        prefix = self._queue_prefix(queue_name) if partition == 0 else self._prefixes(queue_name)[partition]
        return ScriptCall(_LUA, [prefix], list(args))

    def _call(self, queue_name: str, command: str, *args: Any, partition: int = 0) -> Any:
        [reply] = run_scripts(self.client, [self._script_call(queue_name, command, *args, partition=partition)])
        return reply

    def _on_every_partition(self, queue_name: str, command: str, *args: Any) -> list[Any]:
        """The replies of ``command`` run on each partition of ``queue_name`` (one pipeline)."""
        calls = [
            self._script_call(queue_name, command, *args, partition=index)
            for index in range(len(self._prefixes(queue_name)))
        ]
        return run_scripts(self.client, calls)

    def partition_of(self, message: Message) -> int:
        """The partition of its queue ``message`` goes to: its tenant's."""
        count = self.settings.fairness.partitions
        return 0 if count <= 1 else partitions.partition_of(tenant_of(message.options), count)

    def enqueue_call(self, message: Message, body: bytes, *more: tuple[Message, bytes]) -> ScriptCall:
        """The script call storing ``message`` (named after its queue, with its ``redis_message_id``)
        and the (message, body) pairs of ``more``, of the same queue and partition, in order.

        Each message goes to its tenant's partition, whose number its ``redis_message_id`` now
        starts with (changed in place: the body keeps the id it was encoded with, which no one reads).
        """
        self._register(q_name(message.queue_name))
        index = self.partition_of(message)
        args: list[Any] = []
        for each, each_body in ((message, body), *more):
            rid = each.options["redis_message_id"]
            if index and partitions.partition_of_rid(rid) != index:  # rid_in_partition(0, rid) is rid
                rid = each.options["redis_message_id"] = partitions.rid_in_partition(index, rid)
            args += (rid, each_body, int(level_of(each.options)), tenant_of(each.options))
        return self._script_call(message.queue_name, "enqueue", *args, partition=index)

    def settle_later(self, queue_name: str, command: str, rid: str) -> None:
        """Queue an ``ack`` or ``nack`` of ``rid`` for the next :meth:`fetch` of ``queue_name``.

        Worker threads settle the jobs they finished this way and the consumer thread sends them
        with its next fetch (or alone, at once, when no fetch is due): one round trip for all of
        them. They stay queued here until sent, so a consumer restarted after a connection error
        sends them with its first fetch (settling is idempotent).
        """
        with self._lock:
            self._settling.setdefault(queue_name, {}).setdefault(command, []).append(rid)

    def settles_waiting(self, queue_name: str) -> bool:
        return queue_name in self._settling

    def send_settles(self, queue_name: str) -> None:
        """Send the settles queued by :meth:`settle_later` for ``queue_name`` now, without a fetch."""
        self._settle_and_fetch(queue_name, None)

    def fetch(self, queue_name: str, count: int) -> list[tuple[str, bytes]]:
        """Take up to ``count`` messages of ``queue_name`` into this worker's ack set, as (id, body) pairs.

        The settles queued by :meth:`settle_later` go first, in the same round trip.
        """
        return self._settle_and_fetch(queue_name, count)

    def _settle_and_fetch(self, queue_name: str, count: int | None) -> list[tuple[str, bytes]]:
        self._requeue_orphans(queue_name)
        if queue_name in self._unsure:
            self._reclaim(queue_name)
        if queue_name not in self._weighted_queues and queue_name == q_name(queue_name):
            self._store_weights(queue_name)
            self.tenant_limits.install(queue_name, self.settings.limits)
            self._weighted_queues.add(queue_name)
        with self._lock:
            settle = self._settling.pop(queue_name, {})
        calls = [call for command, rids in settle.items() for call in self._settle_call(queue_name, command, rids)]
        try:
            if count is None:
                run_scripts(self.client, calls, replicas=self._replicas())
                fetched = []
            else:
                fetched = self._fetch_in_turn(queue_name, count, calls)
        except redis.RedisError:
            # Queued again (settling is idempotent, so settles a later round trip's failure
            # follows are harmless to send twice).
            with self._lock:
                for command, rids in settle.items():
                    self._settling.setdefault(queue_name, {}).setdefault(command, [])[:0] = rids
            raise
        self._forget(queue_name, [rid for rids in settle.values() for rid in rids])
        return fetched

    def _fetch_in_turn(self, queue_name: str, count: int, settles: list[ScriptCall]) -> list[tuple[str, bytes]]:
        """Fetch from the partition whose turn it is, moving on while they are empty (docs/design.md,
        "Partitions"); ``settles`` go in the first round trip."""
        turns = self._turns.setdefault(queue_name, partitions.PartitionTurns(self.broker_id))
        exempt = int(self.settings.limits.exempt_critical)
        fetched: list[tuple[str, bytes]] = []
        for index in turns.order(len(self._prefixes(queue_name))):
            calls = [*settles, self._script_call(queue_name, "fetch", count, self.drr_scale, exempt, partition=index)]
            try:
                replies = run_scripts(self.client, calls, replicas=self._replicas() if settles else 0, once=True)
            except redis.RedisError:
                # Redis may have run the fetch with its reply lost (a broken connection) or dropped (a
                # settle of the round trip answered CLUSTERDOWN as a failover ended): those messages
                # sit in our ack set, and no one recovers a live worker's ack set.
                self._unsure.add(queue_name)
                raise
            settles = []
            flat, throttled, active = replies[-1]
            if throttled:
                with self._lock:
                    for tenant, reason in zip(throttled[::2], throttled[1::2], strict=True):
                        self._throttled[(queue_name, tenant.decode(), THROTTLE_REASONS[reason])] += 1
            fetched = [(rid.decode(), body) for rid, body in zip(flat[::2], flat[1::2], strict=True)]
            turns.served(index, len(fetched), int(active))
            if fetched:
                break
        with self._lock:
            self._held.setdefault(queue_name, set()).update(rid for rid, _body in fetched)
        return fetched

    def _reclaim(self, queue_name: str) -> None:
        """Requeue what our ack sets hold of ``queue_name`` that this process never received."""
        part = "acks" if queue_name == q_name(queue_name) else "dacks"
        with self.client.pipeline(transaction=False) as pipe:
            for prefix in self._prefixes(queue_name):
                pipe.smembers(f"{prefix}:{part}:{self.broker_id}")
            members = {rid.decode() for found in pipe.execute() for rid in found}
        with self._lock:
            lost = sorted(members - self._held.get(queue_name, set()))
        self.settle(queue_name, "requeue", lost)
        self._unsure.discard(queue_name)
        if lost:
            logger.warning(
                "Requeued %d message(s) of %r fetched by a call whose reply was lost.", len(lost), queue_name
            )

    def drain_throttled(self) -> dict[tuple[str, str, str], int]:
        """Times each (queue, tenant, reason) was skipped for a limit since the last drain (for metrics).

        A tenant is counted once each time it is set aside, not for each pick it then sits out.
        """
        with self._lock:
            counts = dict(self._throttled)
            self._throttled.clear()
        return counts

    def settle(self, queue_name: str, command: str, rids: Sequence[str]) -> None:
        """``ack``, ``nack`` or ``requeue`` the broker ids ``rids`` held by this worker."""
        if not rids:
            return
        run_scripts(self.client, self._settle_call(queue_name, command, rids), replicas=self._replicas())
        self._forget(queue_name, rids)

    def _settle_call(self, queue_name: str, command: str, rids: Sequence[str]) -> list[ScriptCall]:
        """One call per partition the ``rids`` are in (each rid names its own)."""
        placed: dict[int, list[str]] = {}
        for rid in rids:
            placed.setdefault(partitions.partition_of_rid(rid), []).append(rid)
        first = [self.dead_message_ttl] if command == "nack" else []
        return [
            self._script_call(queue_name, command, *first, *batch, partition=index)
            for index, batch in sorted(placed.items())
        ]

    def _forget(self, queue_name: str, rids: Iterable[str]) -> None:
        with self._lock:
            self._held.get(queue_name, set()).difference_update(rids)

    def keep_orphans(self, queue_name: str, rids: Iterable[str]) -> None:
        """Remember ids a closing consumer could not requeue; the next fetch of the queue requeues them."""
        with self._lock:
            self._orphans.setdefault(queue_name, []).extend(rids)

    def _requeue_orphans(self, queue_name: str) -> None:
        with self._lock:
            rids = self._orphans.pop(queue_name, [])
        if rids:
            try:
                self.settle(queue_name, "requeue", rids)
            except redis.RedisError:
                self.keep_orphans(queue_name, rids)
                raise

    def _register(self, queue_name: str) -> None:
        """Add the queue to ``known_queues`` once per process (not at declaration: importing
        actors must not need Redis)."""
        if queue_name not in self._registered_queues:
            self.client.sadd(self._workers_key("known"), queue_name)
            self._registered_queues.add(queue_name)

    def _store_weights(self, queue_name: str) -> None:
        for prefix in self._prefixes(queue_name):
            key = prefix + ":weights"
            with self.client.pipeline() as pipe:
                pipe.delete(key)
                for tenant, weight in self.settings.fairness.weights.items():
                    pipe.hset(key, tenant, weight)
                pipe.execute()

    def beat(self) -> list[tuple[str, float]]:
        """Refresh this worker's heartbeat; return the other workers' stale heartbeats as (id, age s)."""
        return self.liveness.beat()

    def recover_dead_workers(self) -> int:
        """Give back the messages of workers found dead (``fair_redis_liveness.py``); return how many."""
        return self.liveness.recover_dead_workers()

    def _prefixes(self, queue_name: str) -> list[str]:
        """The key prefix of each partition of ``queue_name`` (store/partitions.py)."""
        return self.partition_tags.prefixes(queue_name, self.settings.fairness.partitions)

    def _queue_prefix(self, queue_name: str) -> str:
        """Partition 0's prefix: the queue's own ``{ns:q}``, all of it with one partition."""
        return partitions.partition_prefix(self.namespace, queue_name, 0, 1)

    def _partition_of_tenant(self, tenant: str) -> int:
        """Where producers put ``tenant``'s messages: over the configured partitions only."""
        return partitions.partition_of(tenant, self.settings.fairness.partitions)

    def _workers_prefix(self) -> str:
        return "{" + f"{self.namespace}:workers" + "}"

    def _workers_key(self, name: str) -> str:
        return f"{self._workers_prefix()}:{name}"

    def _clock_arg(self) -> str:
        return "" if self.clock is None else str(int(self.clock()))

    def _now_ms(self) -> int:
        return int(self.clock()) if self.clock is not None else int(time.time() * 1000)

    def _replicas(self) -> int:
        """Replicas an enqueue or a settle waits for (``FAIRWAY_REDIS_WAIT_REPLICAS``)."""
        return self.settings.redis_wait_replicas

    def _max_wait_ms(self) -> int:
        return int(self.settings.fairness.max_wait * 1000)
