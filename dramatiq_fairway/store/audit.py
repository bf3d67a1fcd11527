"""The audit stream: who did what to which selection, how many, and when.

Key ``{namespace}:audit``: a stream, one entry per operator action (bulk cancel, dead-letter
requeue and purge, and the other actions the CLI and the dashboard record), fields ``who``,
``what``, ``filter`` (JSON object), ``count`` and ``when`` (ISO 8601 UTC). Capped near
:data:`AUDIT_KEPT` entries (``XADD MAXLEN ~``), no TTL. ``who`` is the dashboard's signed-in user
or the operating-system user of the ``fairway`` command; nothing secret is written (a filter
holds names, levels and times).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import redis
from pydantic import BaseModel

from ..connections import state_store_client
from ..settings import Settings
from .status_model import iso_from_datetime

AUDIT_KEPT = 10_000


class AuditEntry(BaseModel):
    id: str
    who: str
    what: str
    filter: dict[str, Any]
    count: int
    when: dt.datetime

    def as_json(self) -> dict[str, Any]:
        """The ``fairway audit --json`` shape (docs/design.md)."""
        return {
            "id": self.id,
            "who": self.who,
            "what": self.what,
            "filter": self.filter,
            "count": self.count,
            "when": iso_from_datetime(self.when),
        }


class AuditLog:
    """Appends to and reads the audit stream of one namespace."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis | None = None) -> AuditLog:
        return cls(client or state_store_client(settings), settings.namespace)

    @property
    def key(self) -> str:
        return f"{self.namespace}:audit"

    def append(self, who: str, what: str, selection: dict[str, Any], count: int) -> AuditEntry:
        when = dt.datetime.now(dt.UTC)
        fields = {
            "who": who,
            "what": what,
            "filter": json.dumps(selection, sort_keys=True, default=str),
            "count": count,
            "when": iso_from_datetime(when),
        }
        entry_id = self.client.xadd(self.key, fields, maxlen=AUDIT_KEPT, approximate=True)
        return AuditEntry(id=_text(entry_id), who=who, what=what, filter=selection, count=count, when=when)

    def list(self, limit: int = 50) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first."""
        entries = self.client.xrevrange(self.key, "+", "-", count=limit)
        return [_entry(entry_id, fields) for entry_id, fields in entries]


def _entry(entry_id: bytes | str, raw: dict[Any, Any]) -> AuditEntry:
    fields = {_text(name): _text(value) for name, value in raw.items()}
    try:
        selection = json.loads(fields.get("filter", "{}"))
    except ValueError:
        selection = {"unreadable": fields.get("filter", "")}
    return AuditEntry(
        id=_text(entry_id),
        who=fields.get("who", ""),
        what=fields.get("what", ""),
        filter=selection if isinstance(selection, dict) else {"value": selection},
        count=int(fields.get("count", "0") or 0),
        when=dt.datetime.fromisoformat(fields["when"].replace("Z", "+00:00")) if "when" in fields else _when(entry_id),
    )


def _when(entry_id: bytes | str) -> dt.datetime:
    # A stream id starts with the server's time in ms.
    return dt.datetime.fromtimestamp(int(_text(entry_id).split("-")[0]) / 1000, dt.UTC)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
