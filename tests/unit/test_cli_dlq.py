"""``fairway dlq`` argument parsing without a server; the verbs on real Redis are in tests/cli/test_cli_dlq.py."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from dramatiq_fairway.cli.dlq import parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("7d", timedelta(days=7)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_bad_duration_is_an_argument_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        parse_duration("soon")
