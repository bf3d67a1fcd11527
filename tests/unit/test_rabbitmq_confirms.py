"""The confirm bookkeeping of ``ConfirmedChannel`` (brokers/rabbitmq_confirms.py): multiple acks, nacks, returns."""

from __future__ import annotations

import pika
import pika.frame
import pika.spec

from dramatiq_fairway.brokers.rabbitmq_confirms import ConfirmedChannel


def _channel_waiting_for(tags: list[int]) -> ConfirmedChannel:
    channel = object.__new__(ConfirmedChannel)  # no connection: only the callbacks are exercised
    channel._waiting = {tag: position for position, tag in enumerate(tags)}
    channel._nacked = []
    channel._returned = set()
    return channel


def _frame(method: pika.spec.Basic.Ack | pika.spec.Basic.Nack) -> pika.frame.Method[object]:
    return pika.frame.Method(1, method)


def test_a_multiple_ack_confirms_every_tag_up_to_it_and_no_later_one() -> None:
    channel = _channel_waiting_for([1, 2, 3, 4])
    channel._on_confirm(_frame(pika.spec.Basic.Ack(delivery_tag=3, multiple=True)))
    assert channel._waiting == {4: 3}
    assert channel._nacked == []


def test_a_nack_marks_its_positions_for_a_resend() -> None:
    channel = _channel_waiting_for([5, 6, 7])
    channel._on_confirm(_frame(pika.spec.Basic.Nack(delivery_tag=6, multiple=True)))
    channel._on_confirm(_frame(pika.spec.Basic.Ack(delivery_tag=7, multiple=False)))
    assert channel._waiting == {}
    assert channel._nacked == [0, 1]


def test_a_confirm_of_an_unknown_tag_changes_nothing() -> None:
    channel = _channel_waiting_for([2])
    channel._on_confirm(_frame(pika.spec.Basic.Ack(delivery_tag=9, multiple=False)))
    assert channel._waiting == {2: 0}


def test_a_return_is_told_by_the_message_id_property() -> None:
    channel = _channel_waiting_for([1])
    channel._on_return(None, pika.spec.Basic.Return(), pika.BasicProperties(message_id="m-1"), b"{}")
    assert channel._returned == {"m-1"}
