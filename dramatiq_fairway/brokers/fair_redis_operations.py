"""The operator's view of a ``FairRedisBroker`` queue: pause, resume, depths, summed over its partitions.

A mixin of :class:`~.fair_redis.FairRedisBroker` (``fairway pause|resume|queues``, the metrics'
depth sampler, ``join`` and dead-worker recovery read through it); each method sees every partition
of the queue (docs/design.md, "Partitions"), one pipeline of one-slot calls.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from dramatiq.common import q_name

from ..priority import Priority


class QueueOperations:
    """``FairRedisBroker``'s operator API; the broker supplies the client and the partitions."""

    client: Any  # redis.Redis, untyped as in Dramatiq

    if TYPE_CHECKING:

        def _prefixes(self, queue_name: str) -> list[str]: ...

        def _queue_prefix(self, queue_name: str) -> str: ...

        def _on_every_partition(self, queue_name: str, command: str, *args: Any) -> list[Any]: ...

        def _register(self, queue_name: str) -> None: ...

        def _workers_key(self, name: str) -> str: ...

    def pause(self, queue_name: str) -> None:
        """Stop handing out messages of ``queue_name`` (its delay queue keeps feeding it)."""
        self._register(q_name(queue_name))
        with self.client.pipeline(transaction=False) as pipe:
            for prefix in self._prefixes(queue_name):
                pipe.set(prefix + ":paused", 1)
            pipe.execute()

    def resume(self, queue_name: str) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for prefix in self._prefixes(queue_name):
                pipe.delete(prefix + ":paused")
            pipe.execute()

    def known_queues(self) -> list[str]:
        """Every queue declared on this namespace by any process, sorted."""
        return sorted(name.decode() for name in self.client.smembers(self._workers_key("known")))

    def paused_queues(self) -> list[str]:
        queues = self.known_queues()
        with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.exists(self._queue_prefix(queue) + ":paused")
            flags = pipe.execute()
        return [queue for queue, paused in zip(queues, flags, strict=True) if paused]

    def queue_depths(self, queue_name: str) -> list[dict[str, Any]]:
        """Rows ``{"queue", "priority_level", "tenant", "ready", "delayed", "in_flight"}`` from counters
        (summed over the partitions)."""
        canonical = q_name(queue_name)
        rows: dict[tuple[int, str], dict[str, Any]] = {}
        columns = [
            column
            for reply in self._on_every_partition(canonical, "depths")
            for column in zip(("ready", "delayed", "in_flight"), reply, strict=True)
        ]
        for column, flat in columns:
            for field, count in zip(flat[::2], flat[1::2], strict=True):
                level, tenant = field.decode().split("|", 1)
                row = rows.setdefault(
                    (int(level), tenant),
                    {
                        "queue": canonical,
                        "priority_level": Priority(int(level)).name,
                        "tenant": tenant,
                        "ready": 0,
                        "delayed": 0,
                        "in_flight": 0,
                    },
                )
                row[column] += int(count)
        return [rows[key] for key in sorted(rows)]

    def ready_by_level(self, queue_name: str) -> dict[Priority, int]:
        """Messages waiting per level as the scheduler sees them (after aging), without empty levels."""
        totals: Counter[int] = Counter()
        with self.client.pipeline(transaction=False) as pipe:
            for prefix in self._prefixes(queue_name):
                pipe.hgetall(prefix + ":levels")
            for counts in pipe.execute():
                totals.update({int(level): int(count) for level, count in counts.items()})
        return {Priority(level): count for level, count in sorted(totals.items()) if count > 0}

    def join_size(self, queue_name: str) -> int:
        """Messages of ``queue_name`` (or of its delay queue) not acked yet: what ``join`` waits on."""
        return sum(int(size) for size in self._on_every_partition(queue_name, "qsize"))

    def recover_worker(self, queue_name: str, worker: str) -> int:
        """Requeue what ``worker`` (found dead) holds of ``queue_name`` in every partition; how many."""
        return sum(int(count) for count in self._on_every_partition(queue_name, "recover", worker))
