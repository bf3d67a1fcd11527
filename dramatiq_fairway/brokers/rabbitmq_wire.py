"""One socket write per AMQP message on the connections ``FairRabbitmqBroker`` publishes on.

pika marshals a message into a method frame, a header frame and body frames, then hands each one to
its transport with a write of its own, and the transport sends each with a ``send()`` of its own.
System calls were most of what a publish cost here beyond the wait for its confirm (bench/hotpath.py,
docs/benchmarks.md), so ``write_frames_together`` makes the connection hand the frames of one
``basic_publish`` over as one buffer: the bytes on the wire are the same. ``FramesTogether`` gives a
RabbitmqBroker such connections.
"""

from __future__ import annotations

from typing import Any

import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker

# Set on a pika connection (the one under a BlockingConnection) whose frames are joined.
_JOINED = "_fairway_frames_joined"


def write_frames_together(connection: pika.BlockingConnection) -> None:
    """Make ``connection`` write the frames of each message in one go (idempotent)."""
    impl: Any = connection._impl
    output = getattr(impl, "_output_marshaled_frames", None)
    # A pika private: were it renamed, messages go out frame by frame, as pika writes them.
    if output is None or getattr(impl, _JOINED, False):
        return

    def output_joined(frames: list[bytes]) -> None:
        output([b"".join(frames)] if len(frames) > 1 else frames)

    impl._output_marshaled_frames = output_joined
    setattr(impl, _JOINED, True)


class FramesTogether(RabbitmqBroker):
    """A RabbitmqBroker whose per-thread connections write each message in one go."""

    @property
    def connection(self) -> pika.BlockingConnection:
        connection = getattr(self.state, "connection", None)
        if connection is None:
            connection = RabbitmqBroker.connection.fget(self)  # type: ignore[attr-defined]
            write_frames_together(connection)
        return connection

    @connection.deleter
    def connection(self) -> None:
        RabbitmqBroker.connection.fdel(self)  # type: ignore[attr-defined]
