"""The Dramatiq encoder that keeps args and kwargs sealed on the wire (docs/encryption.md).

Dramatiq's ``Message`` is immutable and every broker writes ``message.encode()``, so the encoding
is the one seam that sees each message's payload on its way out and in. Everything but args and
kwargs stays readable: queue, actor, ids and options, so fairness, limits, breakers, status and the
dashboard work on sealed messages unchanged. JSON only, never pickle.
"""

from __future__ import annotations

import json

from dramatiq.encoder import Encoder, MessageData

from .keyring import ENVELOPE, Keyring, Undecryptable, envelope_of


class SealingEncoder(Encoder):
    """JSON with args and kwargs sealed by ``keyring``'s active key; opened with any of its keys.

    A message that already carries an envelope (requeued as it was stored) is written as it is,
    and a message without one (sent before encryption was turned on) is read in clear.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def encode(self, data: MessageData) -> bytes:
        options = data.get("options") or {}
        if ENVELOPE not in options:
            envelope = self.keyring.seal(data["args"], data["kwargs"], data["message_id"])
            data = {**data, "args": [], "kwargs": {}, "options": {**options, ENVELOPE: envelope}}
        return json.dumps(data, separators=(",", ":")).encode("utf-8")

    def decode(self, data: bytes) -> MessageData:
        fields: MessageData = json.loads(data)
        options = fields.get("options") or {}
        envelope = envelope_of(options)
        if envelope is None:
            return fields
        try:
            args, kwargs = self.keyring.open(envelope, str(fields["message_id"]))
        except Undecryptable as error:
            # Message.decode wraps this in a DecodeError; the consumer dead-letters it as
            # ``undecryptable`` with what was readable around the envelope.
            raise Undecryptable(str(error), fields) from None
        opened = {key: value for key, value in options.items() if key != ENVELOPE}
        return {**fields, "args": args, "kwargs": kwargs, "options": opened}
