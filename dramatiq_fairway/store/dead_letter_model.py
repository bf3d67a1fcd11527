"""The dead-letter record (``DeadLetter``), its index dimensions and the filter that selects records."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..priority import Priority

Reason = Literal[
    "retries_exhausted",
    "permanent",
    "undecodable",
    "undecryptable",
    "rejected",
    "unknown_actor",
    "too_large",
    "held_too_long",
]
Dimension = Literal["queue", "actor", "error_type", "fingerprint", "tenant", "reason"]
DIMENSIONS: tuple[Dimension, ...] = ("queue", "actor", "error_type", "fingerprint", "tenant", "reason")


# The pydantic mypy plugin builds __init__(**kwargs) and then trips over a field named ``kwargs``.
class DeadLetter(BaseModel):  # type: ignore[no-redef]
    """One message that ended failed (docs/design.md, "Redis keys"). Secrets are redacted before it is built."""

    model_config = ConfigDict(frozen=True)

    id: str
    queue: str
    actor: str | None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    options: dict[str, Any] = {}
    tenant: str = "default"
    priority_level: str = Priority.NORMAL.name
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    classification: str | None = None
    retries: int = 0
    fingerprint: str
    enqueued_at: datetime | None = None
    failed_at: datetime
    reason: Reason
    raw: dict[str, Any] = {}
    redacted_fields: list[str] = []

    def dimension(self, name: Dimension) -> str:
        """This record's value of an index dimension (``""`` when it has none)."""
        return str(getattr(self, name) or "")


class DeadLetterFilter(BaseModel):
    """What ``list``, ``export``, ``requeue`` and ``purge`` select; every given field must match."""

    model_config = ConfigDict(frozen=True)

    queue: str | None = None
    actor: str | None = None
    error_type: str | None = None
    fingerprint: str | None = None
    tenant: str | None = None
    reason: Reason | None = None
    since: datetime | None = None
    until: datetime | None = None

    def equalities(self) -> dict[Dimension, str]:
        return {dim: value for dim in DIMENSIONS if (value := getattr(self, dim)) is not None}

    def is_empty(self) -> bool:
        return not self.equalities() and self.since is None and self.until is None

    def matches(self, record: DeadLetter) -> bool:
        if any(record.dimension(dim) != value for dim, value in self.equalities().items()):
            return False
        if self.since is not None and record.failed_at < self.since:
            return False
        return self.until is None or record.failed_at <= self.until
