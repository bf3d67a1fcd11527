"""WorkerRecycling: replace a worker process of the ``dramatiq`` command after N jobs or above M MB.

Long-running image and PDF work leaks memory; Celery answers with ``max_tasks_per_child`` and
``worker_max_memory_per_child``. Dramatiq has neither, and its ``dramatiq`` command shuts every
process down when one of them exits. So the process the command started does not exit: when it
boots, it becomes a small supervisor (:class:`~dramatiq_fairway.middlewares.supervisor.ProcessSupervisor`)
that forks the process doing the work, before any connection or worker thread exists, and forks
a fresh one whenever that one asks to be replaced. The command, its signals and its logs are
unchanged (docs/operations.md, "Worker recycling").

A worker process that reached its limit (``FAIRWAY_WORKERS__MAX_TASKS`` jobs, or a resident
memory over ``FAIRWAY_WORKERS__MAX_MEMORY_MB`` after a job; ``FAIRWAY_WORKERS__QUEUES`` overrides
either for one queue's jobs) logs one line, counts ``fairway_worker_recycled_total{reason}``, asks
its supervisor for a successor, and stops as on SIGTERM: it takes no more work, finishes the jobs
it runs, and hands the messages it prefetched back to the broker. The successor starts at once,
so the process slot serves again while the old process drains.

Recycling needs the ``dramatiq`` command; an in-process ``Worker`` (tests, embedding) only logs at
boot that the limits do not apply.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.logging import get_logger

from ..settings import Settings, load_settings
from .metrics import find_metrics
from .supervisor import ProcessSupervisor, supervised


class WorkerRecycling(Middleware):
    """Replaces this worker process after its job or memory limit (``FAIRWAY_WORKERS__*``).

    Parameters:
      settings(Settings): the limits, in ``settings.workers``.
      resident_bytes(Callable[[], int]): this process's resident memory; injectable for tests.
      supervise(bool | None): become a supervisor when the process boots; by default only in a
        worker process of the ``dramatiq`` command.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        resident_bytes: Callable[[], int] | None = None,
        supervise: bool | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.limits = (settings or load_settings()).workers
        self.resident_bytes = resident_bytes or resident_memory
        self.supervise = supervise
        self._lock = threading.Lock()
        self._jobs: dict[str, int] = {}
        self._replacing = False
        self._worker: Any = None

    def after_process_boot(self, broker: Broker) -> None:
        if not self.limits.recycles:
            return
        in_command = multiprocessing.parent_process() is not None and "dramatiq.cli" in sys.modules
        if self.supervise if self.supervise is not None else in_command:
            # Returns in each worker process it forks; the supervisor itself exits from here.
            ProcessSupervisor(self.logger).run()
        else:
            self.logger.info("FAIRWAY_WORKERS__* limits apply to the processes of the dramatiq command only.")

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self._worker = worker

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        # Counted as the job starts: the process then takes no further job, while up to
        # ``threads - 1`` others already started would each overshoot the limit by one.
        if self.limits.recycles and supervised() and (reason := self._tasks_reached(message.queue_name)):
            self._replace(broker, reason)

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if self.limits.recycles and supervised() and (reason := self._memory_reached(message.queue_name)):
            self._replace(broker, reason)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self.after_process_message(broker, message)

    def _tasks_reached(self, queue_name: str) -> str | None:
        limit = self.limits.for_queue(queue_name).max_tasks
        # A queue with limits of its own counts its jobs apart from the others.
        counted_as = queue_name if queue_name in self.limits.queues else ""
        with self._lock:
            self._jobs[counted_as] = jobs = self._jobs.get(counted_as, 0) + 1
        if limit is not None and jobs >= limit:
            return f"max_tasks: {jobs} jobs of {limit}"
        return None

    def _memory_reached(self, queue_name: str) -> str | None:
        limit = self.limits.for_queue(queue_name).max_memory_mb
        if limit is not None and (used := self.resident_bytes() // 2**20) > limit:
            return f"max_memory: {used} MB resident, over {limit} MB"
        return None

    def _replace(self, broker: Broker, reason: str) -> None:
        with self._lock:
            if self._replacing:
                return
            self._replacing = True
        self.logger.info("Replacing worker process %d (%s).", os.getpid(), reason)
        metrics = find_metrics(broker)
        if metrics is not None:
            metrics.worker_recycled(reason.split(":", 1)[0])
        ProcessSupervisor.request_successor()
        # No job starts from now on: the dramatiq command notices SIGTERM only once a second.
        # Flags only; Worker.pause() would wait for this very thread to pause.
        if self._worker is not None:
            for thread in (*self._worker.consumers.values(), *self._worker.workers):
                thread.pause()
        # The dramatiq command's own stop: running jobs finish, prefetched messages go back.
        os.kill(os.getpid(), signal.SIGTERM)


def resident_memory() -> int:
    """This process's resident memory in bytes (``/proc``; the peak where there is no ``/proc``)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak_kib * (1 if sys.platform == "darwin" else 1024)
