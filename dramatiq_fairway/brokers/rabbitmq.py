"""RabbitMQ with fairway's consumer: per-message decoding and hold-back (see ``consumer.py``)."""

from __future__ import annotations

from functools import partial
from typing import Any

import pika
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.common import dq_name, q_name
from dramatiq.errors import ConnectionClosed

from ..middlewares import dead_letters
from .consumer import decode_or_report, held_copy, hold_delay

_CONNECTION_ERRORS = (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)


class FairwayRabbitmqBroker(RabbitmqBroker):
    """A RabbitmqBroker whose consumers decode per message and hold back messages that must wait."""

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return _FairwayRabbitmqConsumer

    def hold_back(self, message: Message, delay: int) -> None:
        """Publish a waiting copy of ``message`` on its delay queue, firing no middleware hook."""
        queue_name = q_name(message.queue_name)
        waiting = held_copy(message, delay)
        self.declare_queue(queue_name, ensure=True)
        try:
            self.channel.basic_publish(
                exchange="",
                routing_key=dq_name(queue_name),
                body=waiting.encode(),
                properties=pika.BasicProperties(delivery_mode=2, priority=message.options.get("broker_priority")),
                mandatory=self.confirm_delivery,
            )
        except _CONNECTION_ERRORS as error:
            del self.connection
            raise ConnectionClosed(error) from None


class _FairwayRabbitmqConsumer(_RabbitmqConsumer):
    def __next__(self) -> Any:
        try:
            method, _properties, body = next(self.iterator)
            if method is None:
                return None
        except _CONNECTION_ERRORS as error:
            if getattr(error, "reply_code", None) == 404:
                self.broker.queues_pending.add(q_name(self.queue_name))
            raise ConnectionClosed(error) from None

        message = decode_or_report(self.broker, self.queue_name, body)
        if message is None:
            self._ack_tag(method.delivery_tag)
            return None
        if self.queue_name == q_name(self.queue_name):
            delay = hold_delay(self.broker, message)
            if delay:
                self.broker.hold_back(message, delay)
                self._ack_tag(method.delivery_tag)
                return None
        self.known_tags.add(method.delivery_tag)
        return _RabbitmqMessage(method.redelivered, method.delivery_tag, message)

    def nack(self, message: MessageProxy) -> None:
        # A dead-lettered message is kept as a record in the state store; a copy in .XQ would
        # only expire after 7 days and could never be removed by id when the record is requeued.
        if dead_letters.was_recorded(message):
            self.ack(message)
        else:
            super().nack(message)

    def _ack_tag(self, tag: int) -> None:
        self.connection.add_callback_threadsafe(partial(self.channel.basic_ack, tag))
