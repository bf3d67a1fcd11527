"""The scheduling rule (docs/design.md) applied by fairway's RabbitMQ consumer to the messages it has been delivered.

RabbitMQ has no server-side scripts, so ``FairRabbitmqBroker`` spreads a queue over one AMQP
queue per (level, lane) and its consumer takes deliveries from all of them. ``Picker`` holds what
was delivered and not yet handed to a worker thread, one FIFO per (level, tenant), and chooses the
next message exactly as ``fair_redis.lua`` does, but over the delivered messages only:

1. CRITICAL first;
2. else the highest waiting level, unless a lower waiting level was passed by ``PASS_LIMIT``
   picks in a row (the highest such level is served and its count resets);
3. inside the level, weighted fair queueing over tenants (start-time virtual clock: a tenant's
   next start is ``max(its finish, the level's clock)``, so a tenant coming back gets no credit
   for the time it was idle, as with DRR);
4. aging: the head of a FIFO that waited ``max_wait`` moves up one level per ``max_wait``, never
   above HIGH, without leaving its tenant's FIFO.

Each pick costs O(FIFOs held), bounded by the consumer's prefetch times the AMQP queues it reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dramatiq import Message

from ..priority import Priority

PASS_LIMIT = 3
# Finish times at or below the clock mean the same as no entry; they are pruned past this size.
_PRUNE_AT = 1024


@dataclass
class Delivery:
    """A message delivered by RabbitMQ and not yet handed out, with what the rule needs of it."""

    tag: int
    redelivered: bool
    message: Message
    level: Priority
    tenant: str
    enqueued_ms: int


def aged_level(level: Priority, waited_ms: int, max_wait_ms: int) -> Priority:
    """The level a message of ``level`` has earned after waiting ``waited_ms`` (never above HIGH)."""
    if level <= Priority.HIGH or waited_ms < max_wait_ms:
        return level
    return Priority(max(Priority.HIGH, level - max(0, waited_ms) // max_wait_ms))


# The levels that count the picks passing them by (per pick: iterating the enum costs more).
_PASSED_BY = tuple(level for level in Priority if level > Priority.HIGH)


def choose_level(waiting: set[Priority], passed: dict[Priority, int]) -> Priority | None:
    """The level to serve among ``waiting``; updates the pass-by counts in ``passed``."""
    if Priority.CRITICAL in waiting:
        return Priority.CRITICAL
    if not waiting:
        return None
    due = [level for level in _PASSED_BY if level in waiting and passed[level] >= PASS_LIMIT]
    chosen = due[0] if due else min(waiting)
    for level in _PASSED_BY:
        if level not in waiting or level == chosen:
            passed[level] = 0
        elif level > chosen:
            passed[level] += 1
    return chosen


@dataclass
class Picker:
    """Delivered messages in one FIFO per (level, tenant), handed out by the §14 rule."""

    weights: Mapping[str, float]
    max_wait_ms: int
    clock: Callable[[], int]
    _fifos: dict[tuple[Priority, str], deque[Delivery]] = field(default_factory=dict)
    _passed: dict[Priority, int] = field(default_factory=lambda: dict.fromkeys(Priority, 0))
    _clock: dict[Priority, float] = field(default_factory=lambda: dict.fromkeys(Priority, 0.0))
    _finish: dict[tuple[Priority, str], float] = field(default_factory=dict)
    _size: int = 0

    def __len__(self) -> int:
        return self._size

    def add(self, delivery: Delivery) -> None:
        self._fifos.setdefault((delivery.level, delivery.tenant), deque()).append(delivery)
        self._size += 1

    def clear(self) -> None:
        self._fifos.clear()
        self._size = 0

    def drain(self) -> list[Delivery]:
        """Every message held, removed (to be put back on RabbitMQ)."""
        deliveries = [delivery for fifo in self._fifos.values() for delivery in fifo]
        self.clear()
        return deliveries

    def pick(self) -> Delivery | None:
        """The next message by the rule, removed from its FIFO; None when nothing is held."""
        now = self.clock()
        by_level: dict[Priority, list[tuple[Priority, str]]] = {}
        for key, fifo in self._fifos.items():
            by_level.setdefault(aged_level(key[0], now - fifo[0].enqueued_ms, self.max_wait_ms), []).append(key)
        level = choose_level(set(by_level), self._passed)
        if level is None:
            return None
        vclock = self._clock[level]

        def start(key: tuple[Priority, str]) -> tuple[float, int]:
            return max(self._finish.get((level, key[1]), vclock), vclock), self._fifos[key][0].enqueued_ms

        key = min(by_level[level], key=start)
        began = start(key)[0]
        self._clock[level] = began
        self._finish[(level, key[1])] = began + 1.0 / self.weights.get(key[1], 1.0)
        if len(self._finish) > _PRUNE_AT:
            self._finish = {k: f for k, f in self._finish.items() if f > self._clock[k[0]]}
        fifo = self._fifos[key]
        delivery = fifo.popleft()
        if not fifo:
            del self._fifos[key]
        self._size -= 1
        return delivery
