"""One confirmed publish of ``FairRabbitmqBroker.enqueue``, with other work done while its confirm travels.

pika's ``BlockingChannel.basic_publish`` in confirm mode writes the message and waits for its
confirm in one call; ``enqueue`` then read the reply of its state-store call (tenant count and
PENDING status, sent before the publish) only after the confirm came: a serial step of 25-40 µs of
CPU on every send's critical path, while the reply itself had arrived long before
(docs/benchmarks.md). ``publish_confirmed_then`` writes the message, runs ``meanwhile`` (the
read) as soon as the write is done, then waits for the confirm and raises as ``basic_publish``
does (``NackError``, ``UnroutableError``, a lost connection). The message and its one socket
write are the same; only when the read runs changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pika.spec

logger = logging.getLogger(__name__)


def publish_confirmed_then(
    channel: Any,
    routing_key: str,
    body: bytes,
    properties: pika.BasicProperties,
    meanwhile: Callable[[], None],
    *,
    mandatory: bool,
) -> None:
    """Publish on ``channel`` (a ``BlockingChannel``) as its ``basic_publish`` does, and run
    ``meanwhile`` once the frames are written: before the confirm is awaited in confirm mode, after
    the publish otherwise (and where pika's internals are not the ones this was written against).
    ``meanwhile`` is not run when the publish fails before its frames went out: the caller runs it
    then (``Once``)."""
    result = getattr(channel, "_message_confirmation_result", None)
    if not getattr(channel, "_delivery_confirmation", False) or result is None:
        channel.basic_publish("", routing_key, body, properties, mandatory)
        meanwhile()
        return
    # BlockingChannel.basic_publish's confirm-mode branch, with ``meanwhile`` run by the wait's
    # waiter: pika asks it only once the output is on the socket, so ``meanwhile`` runs right after
    # the write, in the same pass over the connection (a second _flush_output cost ~7 µs a send).
    unrun = [meanwhile]

    def confirmed() -> bool:
        if unrun:
            unrun.pop()()
        return bool(result.is_ready())

    with result:
        channel._impl.basic_publish(
            exchange="", routing_key=routing_key, body=body, properties=properties, mandatory=mandatory
        )
        channel._flush_output(confirmed)
        method = result.value.method_frame.method
        returned = channel._puback_return
        channel._puback_return = None
        if isinstance(method, pika.spec.Basic.Nack):
            logger.warning("Message was nacked by RabbitMQ: %r; routing key %s", method, routing_key)
            raise pika.exceptions.NackError([returned] if returned is not None else [])
        if returned is not None:
            raise pika.exceptions.UnroutableError([returned])


class Once:
    """``action``, run by the first call only: the publish runs it between write and confirm, and
    ``enqueue``'s ``finally`` runs it when the publish failed before that."""

    __slots__ = ("_action",)

    def __init__(self, action: Callable[[], None]) -> None:
        self._action: Callable[[], None] | None = action

    def __call__(self) -> None:
        action, self._action = self._action, None
        if action is not None:
            action()
