"""Job status without a server: history times and progress outside an actor; the states on real
brokers are in tests/middlewares/test_status.py."""

from __future__ import annotations

import datetime as dt

import pytest

from dramatiq_fairway.middlewares.status import progress
from dramatiq_fairway.store.status import iso_from_millis, iso_from_seconds


@pytest.mark.parametrize("millis", [0, 1_764_921_371_001, 1_764_921_371_999, 1_764_921_372_000, 4_102_444_799_500])
def test_history_times_are_utc_iso_with_milliseconds(millis: int) -> None:
    expected = dt.datetime.fromtimestamp(millis / 1000, dt.UTC).isoformat(timespec="milliseconds")
    assert iso_from_millis(millis) == expected.replace("+00:00", "Z")
    assert iso_from_seconds(millis / 1000 + 0.0004) == iso_from_millis(millis)


def test_progress_outside_an_actor_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="inside an actor"):
        progress(10)
