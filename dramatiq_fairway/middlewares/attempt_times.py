"""When each running attempt started: what a finished job adds to the per-minute history
(``store/history.py``), measured by ``JobStatus`` on the job's own thread. The thread pays two
clock reads, a dict entry and a tuple; the status writer's flush derives the rest."""

from __future__ import annotations

import time

from dramatiq.broker import MessageProxy

from ..store.history import Attempt
from ..store.status_model import JobState

# The job states the history counts as outcomes; the others (REVOKED, REJECTED, PENDING after a
# shutdown) ran or not but did not finish, and count only as served.
OUTCOMES = {
    JobState.SUCCESS: "success",
    JobState.RETRY: "retried",
    JobState.DEAD_LETTER: "dead_lettered",
    JobState.FAILURE: "failed",
}


class AttemptTimes:
    """Start times (Unix s) of the attempts this process runs, keyed by message id."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def started(self, message: MessageProxy) -> None:
        self._started[message.message_id] = time.time()

    def finished(self, message: MessageProxy, state: JobState, *, ran: bool = True) -> Attempt:
        """The attempt as the history counts it; one that never started (or was skipped: ``ran``
        false) has no wait or run time."""
        started = self._started.pop(message.message_id, None)
        return Attempt(
            time.time(),
            started if ran else None,
            message.queue_name,
            message.actor_name,
            message.options,
            message.message_timestamp,
            OUTCOMES.get(state),
        )
