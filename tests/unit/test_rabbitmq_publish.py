"""publish_confirmed_then: pika's confirmed publish, with the caller's work between the write and the wait."""

from __future__ import annotations

from typing import Any

import pika
import pika.exceptions
import pika.spec
import pytest

from dramatiq_fairway.brokers.rabbitmq_publish import Once, publish_confirmed_then


class _Result:
    """BlockingChannel's _message_confirmation_result: set by the confirm, reset on leaving ``with``."""

    def __init__(self, events: list[str], confirm: Any) -> None:
        self.events, self.confirm, self.value = events, confirm, None

    def __enter__(self) -> _Result:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.value = None

    def is_ready(self) -> bool:
        return self.value is not None


class _Channel:
    def __init__(self, confirm: Any = None, returned: Any = None, confirming: bool = True) -> None:
        self.events: list[str] = []
        self._delivery_confirmation = confirming
        self._message_confirmation_result = _Result(self.events, confirm or pika.spec.Basic.Ack())
        self._puback_return = None
        self._returned = returned
        self._impl = self

    def basic_publish(self, *args: Any, **kwargs: Any) -> None:
        self.events.append(f"publish mandatory={kwargs.get('mandatory', args[-1] if args else None)}")

    def _flush_output(self, *waiters: Any) -> None:
        # As BlockingConnection._flush_output: the waiters are asked once the output is written.
        self.events.append("written")
        assert not any(ready() for ready in waiters)
        self.events.append("confirm awaited")
        self._puback_return = self._returned
        frame = pika.frame.Method(1, self._message_confirmation_result.confirm)
        self._message_confirmation_result.value = type("Confirm", (), {"method_frame": frame})()
        assert any(ready() for ready in waiters)


def _publish(channel: _Channel, mandatory: bool = True) -> None:
    properties = pika.BasicProperties(delivery_mode=2)
    publish_confirmed_then(
        channel, "q.fair.3.0", b"{}", properties, lambda: channel.events.append("meanwhile"), mandatory=mandatory
    )


def test_the_callers_work_runs_after_the_write_and_before_the_confirm_is_awaited() -> None:
    channel = _Channel()
    _publish(channel)
    assert channel.events == ["publish mandatory=True", "written", "meanwhile", "confirm awaited"]


def test_a_nacked_publish_raises_as_pika_does() -> None:
    channel = _Channel(confirm=pika.spec.Basic.Nack())
    with pytest.raises(pika.exceptions.NackError):
        _publish(channel)
    assert "meanwhile" in channel.events


def test_a_returned_publish_raises_unroutable_as_pika_does() -> None:
    channel = _Channel(returned="returned message")
    with pytest.raises(pika.exceptions.UnroutableError) as raised:
        _publish(channel)
    assert raised.value.messages == ["returned message"]
    assert channel._puback_return is None


def test_without_confirms_the_callers_work_runs_after_the_publish() -> None:
    channel = _Channel(confirming=False)
    _publish(channel, mandatory=False)
    assert channel.events == ["publish mandatory=False", "meanwhile"]


def test_once_runs_its_action_on_the_first_call_only() -> None:
    calls: list[int] = []
    once = Once(lambda: calls.append(1))
    once()
    once()
    assert calls == [1]
