"""The §14 rule as FairwayRabbitmqBroker approximates it, checked on ``Picker`` alone (pure Python,
no server): levels, tenants' shares, FIFO, aging. The broker on the real RabbitMQ is tested in
tests/brokers/test_rabbitmq_fair.py.
"""

from __future__ import annotations

from collections import Counter
from itertools import count

from dramatiq import Message

from dramatiq_fairway.brokers.rabbitmq_picker import Delivery, Picker, aged_level
from dramatiq_fairway.priority import Priority

H, N, L, B, C = Priority.HIGH, Priority.NORMAL, Priority.LOW, Priority.BATCH, Priority.CRITICAL
ticks = count(1)


def delivery(level: Priority, tenant: str = "t", enqueued_ms: int | None = None) -> Delivery:
    message: Message[None] = Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    return Delivery(next(ticks), False, message, level, tenant, next(ticks) if enqueued_ms is None else enqueued_ms)


def picks(picker: Picker, n: int) -> list[Delivery]:
    return [d for d in (picker.pick() for _ in range(n)) if d is not None]


def test_backlogged_levels_are_served_h_h_h_n_l_b_and_critical_first() -> None:
    picker = Picker({}, 10**9, lambda: 0)
    for level in (B, L, N, H):
        for _ in range(10):
            picker.add(delivery(level))
    picker.add(delivery(C))
    order = [d.level for d in picks(picker, 13)]
    assert order == [C, H, H, H, N, L, B, H, H, H, N, L, B]


def test_fifo_within_tenant_and_level_and_weighted_shares() -> None:
    picker = Picker({"heavy": 3.0}, 10**9, lambda: 0)
    added = {tenant: [delivery(N, tenant) for _ in range(400)] for tenant in ("heavy", "light")}
    for items in added.values():
        for item in items:
            picker.add(item)
    served = picks(picker, 400)
    assert Counter(d.tenant for d in served) == {"heavy": 300, "light": 100}
    for tenant in added:
        mine = [d.tag for d in served if d.tenant == tenant]
        assert mine == [d.tag for d in added[tenant]][: len(mine)]


def test_a_tenant_coming_back_gets_no_credit_for_its_idle_time() -> None:
    picker = Picker({}, 10**9, lambda: 0)
    for _ in range(50):
        picker.add(delivery(N, "busy"))
    picks(picker, 40)
    for _ in range(10):
        picker.add(delivery(N, "back"))
    assert [d.tenant for d in picks(picker, 6)] == ["back", "busy"] * 3


def test_aging_moves_a_head_up_one_level_per_max_wait_never_above_high() -> None:
    assert aged_level(B, 2_500, 1_000) == N
    assert aged_level(B, 9_000, 1_000) == H
    assert aged_level(B, 1_000, 1_000) == L
    assert aged_level(C, 10**9, 1) == C
    picker = Picker({}, 1_000, lambda: 10_000)
    picker.add(delivery(B, "old", enqueued_ms=9_000))  # earned LOW: still behind NORMAL
    picker.add(delivery(N, "new", enqueued_ms=9_999))
    picker.add(delivery(B, "older", enqueued_ms=7_000))  # earned HIGH
    assert [d.tenant for d in picks(picker, 3)] == ["older", "new", "old"]
