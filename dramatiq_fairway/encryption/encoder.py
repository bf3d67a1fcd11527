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

# Options in which Dramatiq carries whole messages (Pipelines, GroupCallbacks).
_PIPE_TARGET = "pipe_target"
_GROUP_CALLBACKS = "group_completion_callbacks"


class SealingEncoder(Encoder):
    """JSON with args and kwargs sealed by ``keyring``'s active key; opened with any of its keys.

    A message that already carries an envelope (requeued as it was stored, or the next step of a
    pipeline) keeps it; args and kwargs added beside it (Pipelines appends the previous step's
    result) are sealed in with it. The messages Dramatiq carries in options, the next step of a
    pipeline (``pipe_target``) and a group's completion callbacks, are sealed for their own ids,
    and opened when they are decoded themselves. A message without an envelope (sent before
    encryption was turned on) is read in clear.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def encode(self, data: MessageData) -> bytes:
        return json.dumps(self._sealed(data), separators=(",", ":")).encode("utf-8")

    def _sealed(self, data: MessageData) -> MessageData:
        options = dict(data.get("options") or {})
        if isinstance(options.get(_PIPE_TARGET), dict):
            options[_PIPE_TARGET] = self._sealed(options[_PIPE_TARGET])
        if isinstance(options.get(_GROUP_CALLBACKS), list):
            options[_GROUP_CALLBACKS] = [
                self._sealed(callback) if isinstance(callback, dict) else callback
                for callback in options[_GROUP_CALLBACKS]
            ]
        args, kwargs = list(data.get("args") or ()), dict(data.get("kwargs") or {})
        message_id = str(data["message_id"])
        envelope = envelope_of(options)
        if envelope is not None:
            if not args and not kwargs:
                return {**data, "options": options}
            sealed_args, sealed_kwargs = self.keyring.open(envelope, message_id)
            args, kwargs = sealed_args + args, {**sealed_kwargs, **kwargs}
        options[ENVELOPE] = self.keyring.seal(args, kwargs, message_id)
        return {**data, "args": [], "kwargs": {}, "options": options}

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
