"""One warning a minute while the state store is down (docs/design.md, "When the state store is down").

Every feature that degrades without the state store says so in the log, but a worker calls the
store on every job: one line per failed call would flood the log for as long as the outage lasts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

WARN_EVERY = 60.0


class OutageWarning:
    """A warning logged at most once per ``interval`` seconds; the calls in between log nothing."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = WARN_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._warned_at = float("-inf")
        self._lock = threading.Lock()

    def warn(self, message: str, *args: object) -> bool:
        """Log ``message % args`` unless the last one was logged less than ``interval`` ago; whether it was."""
        with self._lock:
            now = self.clock()
            if now - self._warned_at < self.interval:
                return False
            self._warned_at = now
        self.logger.warning(message, *args)
        return True
