"""The state-store outage warning: one line a minute however many calls fail."""

from __future__ import annotations

import logging

import pytest

from dramatiq_fairway.outage import WARN_EVERY, OutageWarning


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_warns_once_a_minute_while_the_outage_lasts(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    warning = OutageWarning(logging.getLogger("fairway.test.outage"), clock=clock)
    caplog.set_level(logging.WARNING, logger="fairway.test.outage")

    assert warning.warn("store down: %s", "first") is True
    clock.now += WARN_EVERY - 0.001
    assert warning.warn("store down: %s", "again") is False
    clock.now += 0.001
    assert warning.warn("store down: %s", "a minute later") is True

    assert [record.getMessage() for record in caplog.records] == [
        "store down: first",
        "store down: a minute later",
    ]


def test_the_first_failure_warns_whatever_the_clock_reads() -> None:
    clock = _Clock()
    clock.now = 0.0  # a monotonic clock may start near zero
    warning = OutageWarning(logging.getLogger("fairway.test.outage"), clock=clock)

    assert warning.warn("store down") is True
