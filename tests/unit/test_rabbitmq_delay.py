"""Park buckets and park queue arguments (brokers/rabbitmq_delay.py), pure: no server. The broker's
use of them on the real RabbitMQ is tested in tests/brokers/test_rabbitmq_delay.py."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from dramatiq_fairway.brokers.rabbitmq_delay import (
    PARK_BUCKETS_MS,
    ParkQueues,
    park_bucket,
    park_expires_ms,
    park_hops,
    park_queue_name,
)
from dramatiq_fairway.brokers.rabbitmq_layout import QueueLayout, QueueRole

HOUR = 3_600_000


def test_a_message_due_within_the_horizon_is_not_parked() -> None:
    assert park_bucket(30_000, 30_000) is None
    assert park_bucket(-5, 30_000) is None
    # Beyond the horizon but shorter than the smallest bucket: held (at most one second).
    assert park_bucket(900, 500) is None


def test_the_bucket_is_the_largest_one_not_longer_than_the_time_left() -> None:
    assert park_bucket(5_000, 1_000) == 4_000
    assert park_bucket(4_000, 1_000) == 4_000
    assert park_bucket(2 * HOUR, 30_000) == 4_096_000
    for remaining in (1_001, 7_777, 65_000, 3 * HOUR, 50 * HOUR):
        bucket = park_bucket(remaining, 1_000)
        assert bucket is not None
        assert bucket <= remaining
        assert remaining < 2 * bucket or bucket == PARK_BUCKETS_MS[-1]


def test_the_ladder_is_bounded_powers_of_two_seconds_up_to_about_18_hours() -> None:
    assert PARK_BUCKETS_MS[0] == 1_000
    assert PARK_BUCKETS_MS[-1] == 65_536_000
    assert all(b == 2 * a for a, b in pairwise(PARK_BUCKETS_MS))
    assert len(PARK_BUCKETS_MS) == 17
    # A week still uses only ladder buckets: the longest one, several times.
    hops = park_hops(7 * 24 * HOUR, 30_000)
    assert set(hops) <= set(PARK_BUCKETS_MS)
    assert hops.count(PARK_BUCKETS_MS[-1]) == 9


def test_hops_end_within_the_horizon_and_never_overshoot_the_eta() -> None:
    for delay in (31_000, 2 * HOUR, 25 * HOUR, 123_456_789):
        hops = park_hops(delay, 30_000)
        assert 0 <= delay - sum(hops) <= 30_000
    assert len(park_hops(2 * HOUR, 30_000)) <= 8


def test_park_queue_dead_letters_into_its_delay_queue_and_outlives_its_messages() -> None:
    assert park_queue_name("q.DQ", 4_000) == "q.DQ.park.4000"
    arguments = QueueLayout().arguments(
        QueueRole.PARK, "q", ready_queue="q.DQ", ttl_ms=4_000, expires_ms=park_expires_ms(4_000)
    )
    assert arguments["x-message-ttl"] == 4_000
    assert arguments["x-dead-letter-exchange"] == ""
    assert arguments["x-dead-letter-routing-key"] == "q.DQ"
    # Declared again at least once per TTL: the lease must cover a message published just before.
    assert arguments["x-expires"] > 2 * 4_000


class RecordingChannel:
    def __init__(self) -> None:
        self.declared: list[tuple[str, dict[str, Any]]] = []

    def queue_declare(self, queue: str, *, durable: bool, arguments: dict[str, Any]) -> None:
        assert durable
        self.declared.append((queue, arguments))


def test_a_bucket_is_declared_on_first_use_and_again_once_per_ttl() -> None:
    now = [100.0]
    park = ParkQueues(1_000, QueueLayout(), clock=lambda: now[0])
    channel = RecordingChannel()
    assert park.route(channel, "q.DQ", 500) == "q.DQ"
    assert park.route(channel, "q.DQ", 5_000) == "q.DQ.park.4000"
    assert park.route(channel, "q.DQ", 6_000) == "q.DQ.park.4000"
    assert [name for name, _ in channel.declared] == ["q.DQ.park.4000"]
    now[0] += 4.0
    park.route(channel, "q.DQ", 6_000)
    assert len(channel.declared) == 2
    park.route(channel, "other.DQ", 6_000)
    assert park.declared("q.DQ") == ["q.DQ.park.4000"]
    park.forget()
    assert park.declared("q.DQ") == []
    park.route(channel, "q.DQ", 6_000)
    assert len(channel.declared) == 4


@pytest.mark.parametrize("remaining", [1_001, 60_000, 2 * HOUR])
def test_route_and_bucket_agree(remaining: int) -> None:
    bucket = park_bucket(remaining, 1_000)
    assert bucket is not None
    routed = ParkQueues(1_000, QueueLayout()).route(RecordingChannel(), "x.DQ", remaining)
    assert routed == park_queue_name("x.DQ", bucket)
