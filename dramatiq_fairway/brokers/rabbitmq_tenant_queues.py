"""The consumer's side of the tenant queues (``rabbitmq_tenants.py``): follow them, gate them, count them down.

``FairPickingConsumer`` hands each settled message's (lane or own queue, level, tenant) to
``TenantQueues``, which sends the decrements to the state store in batches, after the acks went
out (a crash in between leaves a count too high, which ``heal`` repairs; the other order could
open a gate early). Every ``POLL_EVERY`` it reads the counts of its queue (one ``HGETALL``):

- own queues that appeared are declared (so an expired one cannot close the channel) and
  subscribed, with the lanes' prefetch per AMQP queue (``2 x prefetch``: a smaller one let a busy
  level look empty between an ack and the next delivery, bench/fairness.py scenario d); those
  whose count went to 0 are cancelled once this consumer holds none of theirs;
- FIFO per (level, tenant) across the switch from lane to own queue: a delivery from an own queue
  is kept out of the picker while the tenant still has messages on its lane of that level that no
  worker was handed yet (those were published first: counted, minus those this consumer runs);
  the gates are re-read every ``GATE_EVERY`` while one is closed, so the wait is that of the
  lane messages ahead, not a fixed one;
- a count whose AMQP queue was seen empty at two polls ``HEAL_AFTER`` apart, unchanged, and of
  which this consumer holds nothing, lost its decrement (a crash between ack and decrement): it is
  dropped, so a tenant can never be gated or isolated for good.

Without the state store, gates open (lanes are then served as before the tenant queues).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from ..outage import OutageWarning
from ..store.tenant_counts import LANE, OWN, Slot
from .rabbitmq_picker import Delivery, Picker
from .rabbitmq_tenants import STORE_RETRY_AFTER, declare_tenant_queue, lane_of, level_queue, tenant_queue

if TYPE_CHECKING:
    from .rabbitmq import FairRabbitmqBroker

logger = logging.getLogger(__name__)

POLL_EVERY = 0.5
GATE_EVERY = 0.02
SETTLE_EVERY = 0.02
HEAL_AFTER = 5.0


class TenantQueues:
    """Own-queue subscriptions, gates and count decrements of one ``FairPickingConsumer`` (its thread only)."""

    def __init__(
        self,
        broker: FairRabbitmqBroker,
        queue_name: str,
        *,
        channel: Any,
        on_delivery: Callable[..., None],
        picker: Picker,
        paused: Callable[[], bool],
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.channel = channel
        self.on_delivery = on_delivery
        self.picker = picker
        self.paused = paused
        self.counts = broker.tenant_counts
        self.own: dict[str, Slot] = {}
        self._tags: dict[str, str] = {}
        self._snapshot: dict[Slot, int] = {}
        self._gated: dict[Slot, list[Delivery]] = {}
        self._settled: Counter[Slot] = Counter()
        self._held: Counter[Slot] = Counter()
        # Of those, the ones handed to a worker thread (running, not settled yet).
        self._running: Counter[Slot] = Counter()
        # Slot -> (count, ready seen 0 since) of the counts whose queue looked empty.
        self._suspects: dict[Slot, tuple[int, float]] = {}
        self._polled_at = self._gates_at = self._settled_at = self._healed_at = float("-inf")
        self._outage = OutageWarning(logger)

    def slot_of(self, routing_key: str, level: Any, tenant: str) -> Slot | None:
        """The slot a delivery from ``routing_key`` is counted in (None: the old single queue)."""
        if routing_key in self.own:
            return self.own[routing_key]
        if routing_key == self.queue_name:
            return None
        return Slot(LANE, level, tenant)

    def admit(self, slot: Slot | None, delivery: Delivery) -> None:
        """Into the picker, or behind the gate while the tenant's lane messages are counted."""
        if slot is not None:
            self._held[slot] += 1
        gate = self._gated.get(slot) if slot is not None else None
        if gate is not None:
            gate.append(delivery)
        elif slot is not None and slot.kind == OWN and self._ahead(slot) > 0:
            self._gated[slot] = [delivery]
        else:
            self.picker.add(delivery)

    def gated(self) -> int:
        """Deliveries waiting behind a gate (held by the consumer, not in its picker)."""
        return sum(len(deliveries) for deliveries in self._gated.values())

    def drop_gated(self) -> None:
        """Forget the gated deliveries: the channel is closing and RabbitMQ puts them back."""
        self._gated.clear()

    def handed_out(self, slot: Slot | None) -> None:
        """One delivery of ``slot`` went to a worker thread."""
        if slot is not None:
            self._running[slot] += 1

    def settled(self, slot: Slot | None, *, requeued: bool = False, running: bool = True) -> None:
        """One delivery of ``slot`` left this consumer: settled for good, or put back (``requeued``)."""
        if slot is None:
            return
        if running and self._running[slot] > 0:
            self._running[slot] -= 1
        self._held[slot] -= 1
        if self._held[slot] <= 0:
            del self._held[slot]
        if not requeued:
            self._settled[slot] += 1

    def follow(self) -> None:
        """Decrements, gates, subscriptions and healing, each when due (cheap when none is)."""
        if self.counts is None:
            return
        now = time.monotonic()
        try:
            if self._settled and now - self._settled_at >= SETTLE_EVERY:
                self._settled_at = now
                self.flush_settled()
            if self._gated and now - self._gates_at >= GATE_EVERY:
                self._gates_at = now
                self._read_gates()
            if now - self._polled_at >= POLL_EVERY:
                self._polled_at = now
                self._snapshot = self.counts.snapshot(self.queue_name)
                self._subscribe()
                self._release()
            if now - self._healed_at >= HEAL_AFTER / 2:
                self._healed_at = now
                self._heal(now)
        except redis.RedisError as error:
            self._outage.warn("State store unavailable, tenant queues are served without counts: %s", error)
            self._snapshot = {}
            self._release()
            # Each failed call takes seconds (redis-py retries): leave the store alone for a while.
            later = now + STORE_RETRY_AFTER
            self._settled_at = self._gates_at = self._polled_at = self._healed_at = later

    def flush_settled(self) -> None:
        """Send the decrements of the messages settled since the last call (the acks went out first)."""
        if self.counts is not None and self._settled:
            settled, self._settled = self._settled, Counter()
            self.counts.settle(self.queue_name, settled)

    def wait_limit(self, remaining: float) -> float:
        """How long the consumer may wait for deliveries before ``follow`` is due again."""
        due = GATE_EVERY if self._gated else SETTLE_EVERY if self._settled else POLL_EVERY
        return max(0.0, min(remaining, due))

    def cancel_all(self) -> None:
        """Stop consuming every own queue and put back what waits behind a gate (a paused queue)."""
        for tag in self._tags.values():
            self.channel.basic_cancel(tag)
        self._tags.clear()
        for slot, deliveries in self._gated.items():
            for delivery in deliveries:
                self.channel.basic_nack(delivery.tag, requeue=True)
                self.settled(slot, requeued=True)
        self._gated.clear()

    def _lane_slot(self, slot: Slot) -> Slot:
        return Slot(LANE, slot.level, slot.tenant)

    def _ahead(self, slot: Slot) -> int:
        """The tenant's lane messages of ``slot``'s level not yet handed to a worker (by any consumer):
        counted, minus those this consumer runs or settled without having sent the decrement yet."""
        lane = self._lane_slot(slot)
        return self._snapshot.get(lane, 0) - self._running[lane] - self._settled[lane]

    def _read_gates(self) -> None:
        if self.counts is not None:
            lanes = [self._lane_slot(slot) for slot in self._gated]
            self._snapshot.update(self.counts.counts_of(self.queue_name, lanes))
        self._release()

    def _release(self) -> None:
        for slot in [s for s in self._gated if self._ahead(s) <= 0]:
            for delivery in self._gated.pop(slot):
                self.picker.add(delivery)

    def _subscribe(self) -> None:
        wanted = {tenant_queue(self.queue_name, s.level, s.tenant): s for s in self._snapshot if s.kind == OWN}
        if self.paused():
            wanted = {}
        for name in [n for n in self._tags if n not in wanted and not self._holds(self.own[n])]:
            self.channel.basic_cancel(self._tags.pop(name))
            del self.own[name]
        new = [name for name in wanted if name not in self._tags]
        if not new:
            return
        for name in new:
            declare_tenant_queue(self.broker.layout, self.channel, self.queue_name, name)
            self.own[name] = wanted[name]
            self._tags[name] = self.channel.basic_consume(name, self.on_delivery)

    def _holds(self, slot: Slot) -> bool:
        return self._held[slot] > 0 if slot in self._held else False

    def _heal(self, now: float) -> None:
        ready: dict[str, int] = {}
        stale: list[tuple[Slot, int]] = []
        suspects: dict[Slot, tuple[int, float]] = {}
        for slot, count in self._snapshot.items():
            if self._holds(slot):
                continue
            name = self._queue_of(slot)
            if name is None:
                continue
            if name not in ready:
                ready[name] = int(self.channel.queue_declare(queue=name, passive=True).method.message_count)
            if ready[name]:
                continue
            seen, since = self._suspects.get(slot, (count, now))
            if seen != count:
                since = now
            suspects[slot] = (count, since)
            if now - since >= HEAL_AFTER:
                stale.append((slot, count))
        self._suspects = suspects
        if stale and self.counts is not None and self.counts.heal(self.queue_name, stale):
            logger.info("Tenant counts of %r healed (a decrement was lost): %s", self.queue_name, stale)

    def _queue_of(self, slot: Slot) -> str | None:
        """The AMQP queue of ``slot`` if this consumer knows it exists (lanes always; own queues once subscribed)."""
        if slot.kind == LANE:
            return level_queue(self.queue_name, slot.level, lane_of(slot.tenant, self.broker.lanes))
        name = tenant_queue(self.queue_name, slot.level, slot.tenant)
        return name if name in self._tags else None
