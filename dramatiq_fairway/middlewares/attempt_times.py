"""When each running attempt started and how long it waited: what a finished job adds to the
per-minute history (``store/history.py``), measured by ``JobStatus`` on the job's own thread."""

from __future__ import annotations

import time
from typing import Any

from dramatiq.broker import MessageProxy
from dramatiq.common import q_name

from ..priority import level_of
from ..store.history import Finished
from ..store.status_model import JobState
from ..tenants import tenant_of

# The job states the history counts as outcomes; the others (REVOKED, REJECTED, PENDING after a
# shutdown) ran or not but did not finish, and count only as served.
OUTCOMES = {
    JobState.SUCCESS: "success",
    JobState.RETRY: "retried",
    JobState.DEAD_LETTER: "dead_lettered",
    JobState.FAILURE: "failed",
}


class AttemptTimes:
    """Start time and wait of the attempts this process runs, keyed by message id."""

    def __init__(self) -> None:
        self._started: dict[str, tuple[float, float]] = {}

    def started(self, message: MessageProxy) -> None:
        now = time.time()
        since = max(int(message.message_timestamp), int(message.options.get("eta", 0)))
        self._started[message.message_id] = (time.perf_counter(), max(0.0, now * 1000 - since))

    def finished(self, message: MessageProxy, state: JobState, *, ran: bool = True) -> Finished:
        """The attempt as the history counts it; one that never started (or was skipped: ``ran``
        false) has no wait or run time."""
        start = self._started.pop(message.message_id, None)
        if not ran:
            start = None
        options: dict[str, Any] = message.options
        return Finished(
            at=time.time(),
            queue=q_name(message.queue_name),
            actor=message.actor_name,
            tenant=tenant_of(options),
            level=_level(options),
            outcome=OUTCOMES.get(state),
            wait_ms=None if start is None else start[1],
            runtime_ms=None if start is None else (time.perf_counter() - start[0]) * 1000,
        )


def _level(options: dict[str, Any]) -> str:
    try:
        return level_of(options).name
    except ValueError:
        return "UNKNOWN"
