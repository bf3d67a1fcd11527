"""The dead-letter spool: records kept in a local file while the state store cannot be reached.

``DeadLetterStore`` appends to it when a write fails and drains it into the store when the store
answers again (``store/dead_letters.py``).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .dead_letter_model import DeadLetter


class Spool:
    """Records waiting for the store: one JSON line each, appended and fsynced under a file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: DeadLetter) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as spool:
            fcntl.flock(spool, fcntl.LOCK_EX)
            spool.write(record.model_dump_json() + "\n")
            spool.flush()
            os.fsync(spool.fileno())

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def drain(self, write_many: Callable[[Iterator[DeadLetter]], int]) -> int:
        """Pass the spooled records to ``write_many``, then empty the spool; what it returned.

        A failure keeps the spool whole.
        """
        if not self.pending():
            return 0
        with open(self.path, "r+", encoding="utf-8") as spool:
            fcntl.flock(spool, fcntl.LOCK_EX)
            count = write_many(DeadLetter.model_validate_json(line) for line in spool if line.strip())
            spool.seek(0)
            spool.truncate()
            os.fsync(spool.fileno())
            return count
