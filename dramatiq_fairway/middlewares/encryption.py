"""Encryption: args and kwargs sealed with AES-256-GCM on the wire and in every store (docs/encryption.md).

Dramatiq's ``Message`` is immutable, so ``before_enqueue`` cannot replace a payload; every broker
writes ``message.encode()`` and every consumer reads with ``Message.decode``, which both go through
Dramatiq's one global encoder. This middleware therefore installs :class:`SealingEncoder` when it is
built: messages are sealed as they are written (first sends, retries, delay-queue moves, holds) and
opened as a consumer decodes them, so a worker thread and every hook see clear values in memory
only. A body that cannot be opened fails to decode and fairway's consumers hand it to
``DeadLetters.record_undecodable``, which records it as ``undecryptable`` with its ciphertext.

The dead-letter store seals its records itself (``store/dead_letter_sealing.py``), after redaction.
"""

from __future__ import annotations

import dramatiq
from dramatiq import Message, Middleware

from ..encryption.encoder import SealingEncoder
from ..encryption.keyring import Keyring, Undecryptable
from ..errors import ConfigError
from ..settings import Settings, load_settings


class Encryption(Middleware):
    """Installs the sealing encoder for this process (the encoder is global in Dramatiq).

    Parameters:
        settings: the fairway settings; ``FAIRWAY_ENCRYPTION__KEYS`` (key id → base64 32-byte key)
            and ``FAIRWAY_ENCRYPTION__ACTIVE`` (the id new messages are sealed with) must be set.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        keyring = Keyring.from_settings(self.settings)
        if keyring is None:
            raise ConfigError("FAIRWAY_ENCRYPTION__KEYS: not set, so there is nothing to encrypt with")
        self.keyring = keyring
        dramatiq.set_encoder(SealingEncoder(keyring))


def undecryptable_message(error: BaseException) -> Message | None:
    """The message, args and kwargs still sealed, of a body that failed to decode because its
    envelope could not be opened; None for any other decode failure."""
    cause = error if isinstance(error, Undecryptable) else error.__cause__
    if not isinstance(cause, Undecryptable) or not isinstance(cause.message, dict):
        return None
    fields = cause.message
    try:
        return Message(**{**fields, "args": tuple(fields.get("args") or ())})
    except TypeError:  # readable around the envelope, but not a message's fields
        return None
