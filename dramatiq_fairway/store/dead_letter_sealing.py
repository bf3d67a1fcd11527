"""Dead-letter records with their args and kwargs sealed (docs/encryption.md).

With encryption on, a record is written with ``args=[]``, ``kwargs={}`` and the envelope in its
options (and in ``raw``), sealed after redaction and bound to the record id, which is the message
id: the store never holds a payload in clear. A message that could not be decrypted keeps the
envelope it arrived with. Reading opens a record with any key of the keyring, and says why not.
"""

from __future__ import annotations

from typing import Any

from ..encryption.keyring import ENVELOPE, Keyring, Undecryptable, envelope_of
from .dead_letter_model import DeadLetter


def seal_record(record: DeadLetter, keyring: Keyring | None) -> DeadLetter:
    """``record`` with its args and kwargs sealed by the active key (as it is when already sealed or off)."""
    if keyring is None or envelope_of(record.options) is not None:
        return record
    return _with_payload(record, [], {}, keyring.seal(record.args, record.kwargs, record.id))


def open_record(record: DeadLetter, keyring: Keyring | None) -> DeadLetter:
    """``record`` with its args and kwargs in clear; :class:`Undecryptable` saying why not."""
    envelope = envelope_of(record.options)
    if envelope is None:
        return record
    if keyring is None:
        raise Undecryptable(f"sealed under key {envelope.get('kid')!r} and FAIRWAY_ENCRYPTION__KEYS is not set")
    args, kwargs = keyring.open(envelope, record.id)
    return _with_payload(record, args, kwargs, None)


def key_id_of(record: DeadLetter) -> str | None:
    """The key id ``record`` is sealed under, or None when it is in clear."""
    envelope = envelope_of(record.options)
    return str(envelope.get("kid")) if envelope is not None else None


def _with_payload(
    record: DeadLetter, args: list[Any], kwargs: dict[str, Any], envelope: dict[str, str] | None
) -> DeadLetter:
    options = {key: value for key, value in record.options.items() if key != ENVELOPE}
    if envelope is not None:
        options[ENVELOPE] = envelope
    raw = dict(record.raw)
    if "actor_name" in raw:  # a decoded message; an undecodable body's raw is its digest and head
        raw.update(args=args, kwargs=kwargs, options=_raw_options(raw, envelope))
    return record.model_copy(update={"args": args, "kwargs": kwargs, "options": options, "raw": raw})


def _raw_options(raw: dict[str, Any], envelope: dict[str, str] | None) -> dict[str, Any]:
    options = {key: value for key, value in (raw.get("options") or {}).items() if key != ENVELOPE}
    if envelope is not None:
        options[ENVELOPE] = envelope
    return options
