"""Payload encryption (docs/encryption.md): the keyring that seals a message's args and kwargs with
AES-256-GCM, and the Dramatiq encoder that seals them on the wire and opens them when decoding."""

from .keyring import ENVELOPE, Keyring, Undecryptable, envelope_of

__all__ = ["ENVELOPE", "Keyring", "Undecryptable", "envelope_of"]
