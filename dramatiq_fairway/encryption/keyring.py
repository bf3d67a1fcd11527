"""The keyring: key ids → AES-256-GCM keys, one of them active for new envelopes (docs/encryption.md).

An envelope is what replaces a message's args and kwargs: ``{"kid", "nonce", "ct"}`` (nonce and
ciphertext base64), kept in the message option :data:`ENVELOPE`. The plaintext is the JSON of
``{"args": [...], "kwargs": {...}}``; the authenticated data is the message id, so an envelope copied
onto another message fails to open. Key material lives only in this object: its repr, and every
error raised here, name key ids and never a key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, FairwayError

# The message option (and dead-letter record option) holding the sealed args and kwargs.
ENVELOPE = "fairway_enc"
KEY_BYTES = 32
_NONCE_BYTES = 12


class Undecryptable(FairwayError):
    """An envelope that cannot be opened: unknown key id, malformed, tampered or bound to another id.

    ``message`` is what could be decoded around it (args and kwargs still sealed), when known.
    """

    def __init__(self, reason: str, message: Any = None) -> None:
        super().__init__(reason)
        self.message = message


def decode_key(kid: str, text: str) -> bytes:
    """The 32 bytes of base64 ``text``; a ValueError naming ``kid`` (never the text) otherwise."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"key {kid!r} is not base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"key {kid!r} is {len(key)} bytes, not {KEY_BYTES}")
    return key


def envelope_of(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The envelope in a message's (or record's) options, or None for a payload kept in clear."""
    envelope = options.get(ENVELOPE)
    return envelope if isinstance(envelope, dict) else None


class Keyring:
    """Keys by id and the active id; seals with the active key, opens with any key it holds."""

    __slots__ = ("_ciphers", "active")

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        # Imported here: the ``cryptography`` package is the optional extra ``encryption``.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if active not in keys:
            raise ValueError(f"active key id {active!r} is not one of {sorted(keys)}")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self.active = active

    @classmethod
    def from_settings(cls, settings: Any) -> Keyring | None:
        """The keyring of ``settings.encryption``, or None when encryption is off; a
        :class:`ConfigError` when the ``cryptography`` package is missing."""
        section = settings.encryption
        if not section.keys or section.active is None:
            return None
        keys = {kid: decode_key(kid, secret.get_secret_value()) for kid, secret in section.keys.items()}
        try:
            return cls(keys, section.active)
        except ImportError as error:
            raise ConfigError(
                "FAIRWAY_ENCRYPTION__KEYS needs the extra 'encryption' "
                f"(pip install dramatiq-fairway[encryption]): {error}"
            ) from None

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._ciphers)

    def __repr__(self) -> str:
        return f"Keyring(active={self.active!r}, key_ids={self.key_ids!r})"

    def seal(self, args: list[Any] | tuple[Any, ...], kwargs: Mapping[str, Any], message_id: str) -> dict[str, str]:
        """The envelope of ``args`` and ``kwargs`` under the active key, bound to ``message_id``."""
        nonce = os.urandom(_NONCE_BYTES)
        plain = json.dumps({"args": list(args), "kwargs": dict(kwargs)}, separators=(",", ":")).encode()
        sealed = self._ciphers[self.active].encrypt(nonce, plain, message_id.encode())
        return {"kid": self.active, "nonce": _b64(nonce), "ct": _b64(sealed)}

    def open(self, envelope: Mapping[str, Any], message_id: str) -> tuple[list[Any], dict[str, Any]]:
        """The args and kwargs sealed in ``envelope``; :class:`Undecryptable` saying why not."""
        from cryptography.exceptions import InvalidTag

        kid = envelope.get("kid")
        cipher = self._ciphers.get(kid) if isinstance(kid, str) else None
        if cipher is None:
            raise Undecryptable(f"unknown key id {kid!r} (this keyring holds {self.key_ids})")
        try:
            plain = cipher.decrypt(
                base64.b64decode(envelope["nonce"]), base64.b64decode(envelope["ct"]), message_id.encode()
            )
        except InvalidTag:
            raise Undecryptable(
                f"envelope under key {kid!r} fails authentication (tampered, or not sealed for message {message_id!r})"
            ) from None
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise Undecryptable(f"malformed envelope under key {kid!r}") from None
        payload = json.loads(plain)
        return list(payload["args"]), dict(payload["kwargs"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
