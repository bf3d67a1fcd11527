"""ProcessSupervisor: a worker process of the ``dramatiq`` command that forks the process doing
the work and replaces it when it asks (:mod:`~dramatiq_fairway.middlewares.recycling`).

The command's master watches the processes it started and stops everything when one exits, so
the process it started stays: it forks before any connection or worker thread exists (from the
``after_process_boot`` hook), and the fork returns from that hook to run Dramatiq's worker as
usual. Signals the master sends (SIGTERM, SIGHUP for a reload) are passed on to the workers, and
the supervisor exits with them. A worker asks for a successor with SIGUSR1 before it stops; the
supervisor forks the successor at once, so the slot serves again while the old process drains.

A worker that dies (a signal, a non-zero exit) after running at least :data:`MIN_LIFETIME`
seconds is replaced too, with a critical log line; one that dies sooner stops the command as
stock Dramatiq would, so that a worker failing at start (an import error) does not loop.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from typing import Any, ClassVar

FORWARDED = (signal.SIGTERM, signal.SIGHUP)
SUCCESSOR_SIGNAL = signal.SIGUSR1
MIN_LIFETIME = 10.0
POLL_INTERVAL = 0.05


def supervised() -> bool:
    """Whether this process was forked by a supervisor that still runs."""
    parent = ProcessSupervisor.forked_by
    return parent is not None and os.getppid() == parent


class ProcessSupervisor:
    """Forks worker processes from the process the ``dramatiq`` command started; see the module."""

    # In a worker process forked by a supervisor: the supervisor's pid.
    forked_by: ClassVar[int | None] = None

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self._children: dict[int, float] = {}
        self._successor_wanted = True
        self._stopping = False
        self._died_of: int | None = None
        self._exit_code = 0

    @staticmethod
    def request_successor() -> None:
        """From a supervised worker process: ask for a process to take this one's place."""
        if supervised() and ProcessSupervisor.forked_by is not None:
            os.kill(ProcessSupervisor.forked_by, SUCCESSOR_SIGNAL)

    def run(self) -> None:
        """Supervise until the command stops; returns only in each forked worker process."""
        inherited = {signum: signal.getsignal(signum) for signum in (*FORWARDED, SUCCESSOR_SIGNAL)}
        for signum in FORWARDED:
            signal.signal(signum, self._on_stop_signal)
        signal.signal(SUCCESSOR_SIGNAL, self._on_successor_request)
        while True:
            if self._successor_wanted and not self._stopping:
                self._successor_wanted = False
                if self._fork_worker(inherited):
                    return
            self._reap()
            if not self._children:
                if self._stopping:
                    break
                # Exited cleanly without asking (or before its request arrived): keep the slot served.
                self._successor_wanted = True
                continue
            time.sleep(POLL_INTERVAL)
        if self._died_of is not None:
            # Die of the worker's signal, as the master would have seen it die without us.
            signal.signal(self._died_of, signal.SIG_DFL)
            os.kill(os.getpid(), self._died_of)
        sys.exit(self._exit_code)

    def _fork_worker(self, inherited: dict[signal.Signals, Any]) -> bool:
        pid = os.fork()
        if pid == 0:
            ProcessSupervisor.forked_by = os.getppid()
            for signum, handler in inherited.items():
                signal.signal(signum, handler)
            random.seed()
            return True
        self._children[pid] = time.monotonic()
        self.logger.info("Started worker process %d.", pid)
        return False

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                return
            if pid == 0:
                return
            started = self._children.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if code == 0 or self._stopping or started is None:
                continue
            if time.monotonic() - started >= MIN_LIFETIME:
                self.logger.critical("Worker process %d exited unexpectedly (code %d); replacing it.", pid, code)
                self._successor_wanted = True
                continue
            self.logger.critical("Worker process %d exited at start (code %d); stopping.", pid, code)
            self._died_of, self._exit_code = (-code, 1) if code < 0 else (None, code)
            self._stop(signal.SIGTERM)

    def _stop(self, signum: int) -> None:
        self._stopping = True
        for pid in list(self._children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                self._children.pop(pid, None)

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        self._stop(signum)

    def _on_successor_request(self, _signum: int, _frame: Any) -> None:
        self._successor_wanted = True
