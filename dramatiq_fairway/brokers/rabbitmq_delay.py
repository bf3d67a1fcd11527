"""Park queues: where a delayed message waits on RabbitMQ while its eta is beyond the horizon.

A worker holds a message of ``q.DQ`` unacked until its eta, and RabbitMQ closes a channel whose
delivery stays unacked longer than ``consumer_timeout`` (30 min by default; Dramatiq issue #827).
So a message due later than ``delay_horizon`` waits in a park queue ``q.DQ.park.<ms>`` instead:
declared with ``x-message-ttl=<ms>``, it dead-letters every message back into ``q.DQ`` after
exactly that time (per-queue TTL expires in publishing order, unlike per-message TTL). The bucket
is the largest step of a fixed ladder (powers of 2 seconds up to 2^16 s, about 18 h) not longer
than the time left, so a message arrives in ``q.DQ`` before its eta; there the consumer parks it
again until it is due within the horizon (each hop at least halves what is left). The ladder
bounds the number of park queues per queue; ``x-expires`` removes the unused ones.
docs/design.md, "Broker layout on RabbitMQ", has the whole picture.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dramatiq.common import q_name

from .rabbitmq_layout import QueueLayout, QueueRole

# The ladder of park buckets, in ms: 1 s, 2 s, 4 s, ... 65,536 s. A longer wait hops several times.
PARK_BUCKETS_MS: tuple[int, ...] = tuple(1000 * 2**power for power in range(17))
# A bucket's queue outlives its last message by this much before RabbitMQ deletes it unused.
_EXPIRES_MARGIN_MS = 10 * 60 * 1000
DEFAULT_DELAY_HORIZON_MS = 30_000


def park_bucket(remaining_ms: int, horizon_ms: int) -> int | None:
    """The TTL (ms) of the park queue a message due in ``remaining_ms`` waits in, or None when it
    is due within ``horizon_ms`` (or within the smallest bucket) and goes to the delay queue."""
    if remaining_ms <= horizon_ms:
        return None
    fitting = [bucket for bucket in PARK_BUCKETS_MS if bucket <= remaining_ms]
    return fitting[-1] if fitting else None


def park_queue_name(delay_queue: str, bucket_ms: int) -> str:
    return f"{delay_queue}.park.{bucket_ms}"


def park_expires_ms(bucket_ms: int) -> int:
    """The ``x-expires`` of a park queue (its other arguments: ``QueueLayout``, role PARK).

    ``x-expires`` counts from the last declare, not the last publish, so it is more than twice the
    TTL: a publisher redeclares a bucket at least once per TTL (``ParkQueues``), and a message
    published just before that is still inside the lease when it expires."""
    return 2 * bucket_ms + _EXPIRES_MARGIN_MS


def park_hops(delay_ms: int, horizon_ms: int) -> list[int]:
    """The buckets a message delayed by ``delay_ms`` passes through (for docs and bench/long_delay.py)."""
    hops = []
    remaining = delay_ms
    while (bucket := park_bucket(remaining, horizon_ms)) is not None:
        hops.append(bucket)
        remaining -= bucket
    return hops


class ParkQueues:
    """Routes delayed messages of one process to their park queue, declaring each bucket before its
    first use and again once per TTL (which renews its ``x-expires`` lease)."""

    def __init__(self, horizon_ms: int, layout: QueueLayout, clock: Any = time.monotonic) -> None:
        self.horizon_ms = horizon_ms
        self.layout = layout
        self._clock = clock
        self._declared_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def route(self, channel: Any, delay_queue: str, remaining_ms: int) -> str:
        """The AMQP queue for a message of ``delay_queue`` due in ``remaining_ms``: a park queue
        (declared on ``channel`` when due) or ``delay_queue`` itself."""
        bucket = park_bucket(remaining_ms, self.horizon_ms)
        if bucket is None:
            return delay_queue
        name = park_queue_name(delay_queue, bucket)
        now = self._clock()
        with self._lock:
            declared_at = self._declared_at.get(name)
        if declared_at is None or now - declared_at >= bucket / 1000:
            self.layout.declare(
                channel,
                QueueRole.PARK,
                name,
                q_name(delay_queue),
                ready_queue=delay_queue,
                ttl_ms=bucket,
                expires_ms=park_expires_ms(bucket),
            )
            with self._lock:
                self._declared_at[name] = now
        return name

    def declared(self, delay_queue: str) -> list[str]:
        """The park queues of ``delay_queue`` this process has declared."""
        prefix = park_queue_name(delay_queue, 0)[:-1]
        with self._lock:
            return [name for name in self._declared_at if name.startswith(prefix)]

    def forget(self) -> None:
        """Declare every bucket again at its next use (after a reconnect: it may be a new node)."""
        with self._lock:
            self._declared_at.clear()
