"""Key rotation (docs/encryption.md): re-seal dead-letter records with the active key and report
which key ids are still in use, so an old key can be retired once nothing uses it.

Queued and delayed messages are re-sealed by the workers as they move (a retry, a hold, a move
out of the delay queue is a new write, sealed with the active key); records stay as written until
this runs. Records are read a page at a time and rewritten in place (``DeadLetterStore.rewrite``):
their ids, indexes and trends do not change.
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel

from ..encryption.keyring import Keyring, Undecryptable
from ..errors import ConfigError
from ..settings import Settings
from ..store.dead_letter_sealing import key_id_of, open_record, seal_record
from ..store.dead_letters import DeadLetter, DeadLetterStore

# The key of records written before encryption was on, in the per-key counts.
CLEAR = "clear"
_BATCH = 500


class UnopenedRecord(BaseModel):
    id: str
    key_id: str
    reason: str


class RotationReport(BaseModel):
    """What ``rotate_dead_letters`` found and did; counts per key id (``clear``: not sealed)."""

    dry_run: bool
    active: str
    before: dict[str, int] = {}
    resealed: int = 0
    after: dict[str, int] = {}
    unopened: list[UnopenedRecord] = []

    @property
    def old_keys_in_use(self) -> dict[str, int]:
        """Records still under a key other than the active one (or in clear) after the rotation."""
        return {kid: count for kid, count in self.after.items() if kid != self.active}


def rotate_dead_letters(
    settings: Settings, *, dry_run: bool = False, store: DeadLetterStore | None = None
) -> RotationReport:
    """Re-seal every dead-letter record not under the active key (records in clear included);
    with ``dry_run``, only count. A record no key of the keyring opens is left as it is and listed."""
    keyring = Keyring.from_settings(settings)
    if keyring is None:
        raise ConfigError("FAIRWAY_ENCRYPTION__KEYS: not set, so there is no active key to re-encrypt with")
    store = store or DeadLetterStore(settings)
    report = RotationReport(dry_run=dry_run, active=keyring.active)
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    batch: list[DeadLetter] = []
    for record in store.iter_records():
        kid = key_id_of(record) or CLEAR
        before[kid] += 1
        resealed = _resealed(record, keyring, report)
        if resealed is None:
            after[kid] += 1
            continue
        after[keyring.active] += 1
        report.resealed += 1
        if not dry_run:
            batch.append(resealed)
            if len(batch) >= _BATCH:
                store.rewrite(batch)
                batch = []
    if batch:
        store.rewrite(batch)
    report.before, report.after = dict(before), dict(after)
    return report


def _resealed(record: DeadLetter, keyring: Keyring, report: RotationReport) -> DeadLetter | None:
    """``record`` sealed under the active key, or None when it already is, has no payload or cannot be opened."""
    kid = key_id_of(record)
    if kid == keyring.active or (kid is None and "actor_name" not in record.raw):
        return None
    try:
        opened = open_record(record, keyring)
    except Undecryptable as error:
        report.unopened.append(UnopenedRecord(id=record.id, key_id=kid or CLEAR, reason=str(error)))
        return None
    return seal_record(opened, keyring)
