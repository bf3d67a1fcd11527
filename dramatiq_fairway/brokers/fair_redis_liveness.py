"""Worker liveness for ``FairRedisBroker``: heartbeats, and recovery of dead workers' messages.

Each broker names its connections ``fairway:<broker_id>`` and refreshes its heartbeat from its own
thread; when a heartbeat is ``STALE_AFTER`` seconds old, a live worker looks the named connections
up in ``CLIENT LIST`` and recovers the dead worker's messages once they have been gone for
``GONE_GRACE`` seconds, or after ``FAIRWAY_HEARTBEAT_TIMEOUT`` if they are still there.

Heartbeat ages are measured by the Redis server's ``TIME`` (a test clock must not make live
workers look dead); how long connections have been gone is measured by ``clock``, injectable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from ..redis_cluster import clients_near
from ..store.scripts import LuaScript, ScriptCall, run_scripts

if TYPE_CHECKING:
    from .fair_redis import FairRedisBroker

logger = logging.getLogger(__name__)

# Seconds between heartbeats, and the age at which a heartbeat is worth a look at CLIENT LIST.
HEARTBEAT_INTERVAL = 1.0
STALE_AFTER = 3.0
GONE_GRACE = 2.0
CLIENT_NAME_PREFIX = "fairway:"


class WorkerLiveness:
    """One broker's heartbeat thread and its watch over the other workers of the namespace.

    Parameters:
      broker: the broker whose heartbeat this is and whose queues dead workers' messages go back to.
      script: the broker's Lua script (its ``heartbeat`` command).
      clock: seconds, monotonic, for how long a worker's connections have been gone;
        ``time.monotonic`` by default. Tests set it to pass ``GONE_GRACE`` without sleeping.
    """

    def __init__(self, broker: FairRedisBroker, script: LuaScript, clock: Callable[[], float] = time.monotonic) -> None:
        self.broker = broker
        self.script = script
        self.clock = clock
        self._thread: _Heartbeat | None = None
        self._lock = threading.Lock()
        self._missing: dict[str, float] = {}

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = _Heartbeat(self)
                self._thread.start()

    def stop(self) -> None:
        """Stop beating and delete this worker's own keys (a clean exit needs no recovery)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.stop()
        self._forget(self.broker.broker_id)

    def beat(self) -> list[tuple[str, float]]:
        """Refresh this worker's heartbeat; return the other workers' stale heartbeats as (id, age s)."""
        broker = self.broker
        args = ["heartbeat", "", broker.broker_id, 0, "", int(STALE_AFTER * 1000), *sorted(broker._consumed)]
        [(now, stale)] = run_scripts(broker.client, [ScriptCall(self.script, [broker._workers_prefix()], args)])
        now_ms = int(now)
        return [
            (worker.decode(), (now_ms - float(score)) / 1000)
            for worker, score in zip(stale[::2], stale[1::2], strict=True)
            if worker.decode() != broker.broker_id
        ]

    def recover_dead_workers(self) -> int:
        """Give back the messages of workers found dead (see the module docstring); return how many."""
        stale = self.beat()
        if not stale:
            self._missing.clear()
            return 0
        connected = self._connected_broker_ids()
        now = self.clock()
        recovered = 0
        for worker, age in stale:
            if connected is not None and worker not in connected:
                # Seen without a connection twice, GONE_GRACE apart: after a Redis restart live
                # workers need a heartbeat interval to reconnect, and must not be taken for dead.
                missing_since = self._missing.setdefault(worker, now)
                gone = now - missing_since >= GONE_GRACE
            else:
                self._missing.pop(worker, None)
                gone = False
            if gone or age >= self.broker.settings.heartbeat_timeout:
                self._missing.pop(worker, None)
                recovered += self.recover(worker)
        return recovered

    def recover(self, worker: str) -> int:
        """Requeue every message ``worker`` holds, then delete its keys; return how many."""
        broker = self.broker
        queues = broker.client.smembers(broker._workers_key(f"queues:{worker}"))
        count = sum(broker.recover_worker(queue.decode(), worker) for queue in queues)
        self._forget(worker)
        if count:
            logger.warning("Recovered %d message(s) held by dead worker %s.", count, worker)
        return count

    def _forget(self, worker: str) -> None:
        with self.broker.client.pipeline() as pipe:
            pipe.zrem(self.broker._workers_key("heartbeats"), worker)
            pipe.delete(self.broker._workers_key(f"queues:{worker}"))
            pipe.execute()

    def _connected_broker_ids(self) -> set[str] | None:
        """Broker ids with an open connection to Redis, or None when ``CLIENT LIST`` is refused."""
        try:
            # A live worker beats into the heartbeats key, so it holds a connection to that key's
            # server: on a cluster its master's CLIENT LIST is the one to read.
            clients = clients_near(self.broker.client, self.broker._workers_key("heartbeats"))
        except redis.ResponseError:
            return None
        return {
            client["name"].removeprefix(CLIENT_NAME_PREFIX)
            for client in clients
            if client.get("name", "").startswith(CLIENT_NAME_PREFIX)
        }


class _Heartbeat(threading.Thread):
    """Refreshes the broker's heartbeat and recovers dead workers' messages, on its own thread."""

    def __init__(self, liveness: WorkerLiveness) -> None:
        super().__init__(name=f"fairway-heartbeat-{liveness.broker.broker_id[:8]}", daemon=True)
        self.liveness = liveness
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.liveness.recover_dead_workers()
            except redis.RedisError as error:
                logger.warning("Heartbeat failed: %s", error)
            except Exception:
                # Whatever happens, keep beating: a silent live worker would be recovered twice.
                logger.exception("Unexpected error in the heartbeat thread.")
            self.stopped.wait(HEARTBEAT_INTERVAL)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
