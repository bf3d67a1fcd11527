"""What ``fairway migrate`` reports per queue (its ``--json`` shape, docs/design.md)."""

from __future__ import annotations

from pydantic import BaseModel


class Migrated(BaseModel):
    """One queue's messages moved into fairway's layout (or that would move, with ``--dry-run``)."""

    queue: str
    ready: int = 0
    delayed: int = 0
    dead: int = 0
    # RabbitMQ only: the queues deleted and declared again with fairway's arguments (the 406).
    redeclared: list[str] = []
