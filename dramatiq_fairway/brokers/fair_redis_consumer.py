"""``FairRedisConsumer``: what a worker fetches a :class:`~.fair_redis.FairRedisBroker` queue through.

The broker owns the keys and the script calls; the consumer owns one worker's view of a queue:
its prefetched cache, the messages delivered and not settled yet, the poll backoff, and the
fairway rules applied per message (decode each body alone, hold back at the start).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import redis
from dramatiq import MessageProxy
from dramatiq.broker import Consumer
from dramatiq.common import compute_backoff, q_name
from dramatiq.errors import ConnectionClosed

from ..middlewares import dead_letters
from .delivery import decode_or_report, held_at_start, hold_delay

if TYPE_CHECKING:
    from .fair_redis import FairRedisBroker


class FairRedisConsumer(Consumer):
    """Fetches (id, body) pairs, decodes each alone and applies fairway's hold-back rule."""

    def __init__(self, broker: FairRedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = prefetch
        self.timeout = timeout
        self.canonical = queue_name == q_name(queue_name)
        self.cache: deque[tuple[str, bytes]] = deque()
        self.delivered: set[str] = set()
        # Set by worker threads when they settle a job: wakes an idle consumer to send it now.
        self.settled = threading.Event()
        self.misses = 0

    @property
    def outstanding_message_count(self) -> int:
        return len(self.cache) + len(self.delivered)

    def ack(self, message: MessageProxy) -> None:
        self._settle("ack", message)

    def nack(self, message: MessageProxy) -> None:
        delay = held_at_start(message)
        if delay is not None:
            with _closed_on_connection_error():
                self.broker.hold_back(message._message, delay)
            self.delivered.discard(message.options["redis_message_id"])
            self.settled.set()
            return
        # As on RabbitMQ: a message recorded in the dead-letter store is acked, so requeue and
        # purge never have to find it in .XQ.
        self._settle("ack" if dead_letters.was_recorded(message) else "nack", message)

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        rids = [message.options["redis_message_id"] for message in messages]
        try:
            self.broker.settle(self.queue_name, "requeue", rids)
        except redis.ConnectionError:
            # Dramatiq closes a consumer after requeueing, and skips the close if this raises:
            # the ids wait for the next fetch, as a closing consumer's cache does.
            self.broker.keep_orphans(self.queue_name, rids)
        self.delivered.difference_update(rids)

    def close(self) -> None:
        rids = [rid for rid, _body in self.cache]
        self.cache.clear()
        try:
            self.broker.send_settles(self.queue_name)
            self.broker.settle(self.queue_name, "requeue", rids)
        except redis.ConnectionError:
            # The settles stay queued in the broker; the orphans are requeued by the next fetch.
            self.broker.keep_orphans(self.queue_name, rids)

    def __next__(self) -> MessageProxy | None:
        while True:
            if not self.cache:
                wanted = self.prefetch - self.outstanding_message_count
                if wanted > 0:
                    with _closed_on_connection_error():
                        self.cache.extend(self.broker.fetch(self.queue_name, wanted))
                else:
                    self._send_settles()
                if not self.cache:
                    misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                    # Woken to send a settle: not a miss, the poll interval stays as it was.
                    if not self.settled.wait(backoff_ms / 1000):
                        self.misses = misses
                    self.settled.clear()
                    return None
            # Settles made while the cache is delivered go with the fetch that follows its last
            # message: sending them before each message cost a round trip per two or three jobs
            # with 1 ms jobs (docs/benchmarks.md, "Redis worker drain").
            rid, body = self.cache.popleft()
            proxy = self._deliverable(rid, body)
            if proxy is not None:
                self.misses = 0
                return proxy

    def _deliverable(self, rid: str, body: bytes) -> MessageProxy | None:
        try:
            message = decode_or_report(self.broker, self.queue_name, body)
        except Exception:
            self.cache.appendleft((rid, body))
            raise
        if message is None:
            with _closed_on_connection_error():
                self.broker.settle(self.queue_name, "ack", [rid])
            return None
        message.options["redis_message_id"] = rid
        if self.canonical:
            delay = hold_delay(self.broker, message)
            if delay:
                with _closed_on_connection_error():
                    self.broker.hold_back(message, delay)
                return None
        self.delivered.add(rid)
        return MessageProxy(message)

    def _settle(self, command: str, message: MessageProxy) -> None:
        rid = message.options["redis_message_id"]
        self.broker.settle_later(self.queue_name, command, rid)
        self.delivered.discard(rid)
        # Event.set takes a lock and notifies even when the flag is up: with eight worker threads
        # settling, it is most often already set (the consumer clears it when it wakes).
        if not self.settled.is_set():
            self.settled.set()

    def _send_settles(self) -> None:
        if self.broker.settles_waiting(self.queue_name):
            with _closed_on_connection_error():
                self.broker.send_settles(self.queue_name)


@contextmanager
def _closed_on_connection_error() -> Iterator[None]:
    """Dramatiq's worker restarts a consumer on ``ConnectionClosed``, not on redis-py's errors."""
    try:
        yield
    except redis.ConnectionError as error:
        raise ConnectionClosed(error) from None
