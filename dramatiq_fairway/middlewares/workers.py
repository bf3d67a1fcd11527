"""WorkerHeartbeats: each worker process reports itself to the state store every few seconds.

What it reports (:class:`~dramatiq_fairway.store.workers.WorkerInfo`): host, pid, queues,
threads, jobs running now and jobs processed, resident memory and the limits after which the
process is replaced (``FAIRWAY_WORKERS__*``), where its metrics are served (or why they are not),
and the time of the report. ``fairway workers``
and the dashboard list the processes whose report is fresh. A job costs two integer updates under
a lock; the state store sees one write per process every
:data:`~dramatiq_fairway.store.workers.BEAT_INTERVAL` seconds. With the state store down the
report is skipped (the list then shows the process once the store is back).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import uuid
from typing import Any

import redis
from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.logging import get_logger

from ..settings import Settings, load_settings
from ..store.workers import BEAT_INTERVAL, WorkerInfo, WorkerRegistry
from .metrics_exporter import exporter_status
from .recycling import resident_memory


class WorkerHeartbeats(Middleware):
    """Reports this worker process (queues, threads, in flight, processed) to the state store."""

    interval = BEAT_INTERVAL

    def __init__(self, *, settings: Settings | None = None, registry: WorkerRegistry | None = None) -> None:
        self.logger = get_logger(__name__, type(self))
        self.settings = settings or load_settings()
        self._registry = registry
        self._lock = threading.Lock()
        self._in_flight = 0
        self._processed = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._info: WorkerInfo | None = None

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        now = dt.datetime.now(dt.UTC)
        queues = sorted(worker.consumer_whitelist or broker.get_declared_queues())
        self._info = WorkerInfo(
            id=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=queues,
            threads=worker.worker_threads,
            in_flight=0,
            processed=0,
            started_at=now,
            beat_at=now,
            max_tasks=self.settings.workers.max_tasks,
            max_memory_mb=self.settings.workers.max_memory_mb,
        )
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="fairway-worker-heartbeat", daemon=True)
        self._thread.start()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        with self._lock:
            self._in_flight += 1

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        with self._lock:
            self._in_flight -= 1
            self._processed += 1

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self.after_process_message(broker, message)

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._info is not None:
            try:
                self.registry.remove(self._info.id)
            except redis.RedisError:
                self.logger.debug("Could not remove this worker from the state store.", exc_info=True)

    @property
    def registry(self) -> WorkerRegistry:
        # Built on first use: with FAIRWAY_BROKER=rabbitmq alone the state store is the embedded
        # Redis, which a producer importing the stack must not start.
        if self._registry is None:
            self._registry = WorkerRegistry.from_settings(self.settings)
        return self._registry

    def _run(self) -> None:
        while True:
            self._beat()
            if self._stopping.wait(self.interval):
                return

    def _beat(self) -> None:
        assert self._info is not None
        with self._lock:
            self._info.in_flight, self._info.processed = self._in_flight, self._processed
        self._info.beat_at = dt.datetime.now(dt.UTC)
        self._info.metrics = exporter_status()
        self._info.resident_mb = round(resident_memory() / 2**20, 1)
        try:
            self.registry.beat(self._info)
        except redis.RedisError as error:
            self.logger.warning("Could not report this worker to the state store: %s", error)
