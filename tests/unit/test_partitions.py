"""``store/partitions.py`` without servers: routing, broker ids and the turns workers take."""

from __future__ import annotations

from collections import Counter

from dramatiq_fairway.store.partitions import (
    PartitionTurns,
    partition_of,
    partition_of_rid,
    preferred_partition,
    rid_in_partition,
)


def test_tenants_and_broker_ids_name_their_partition() -> None:
    assert {partition_of(f"t{i}", 1) for i in range(50)} == {0}
    assert {partition_of(f"t{i}", 4) for i in range(200)} == {0, 1, 2, 3}
    assert partition_of("acme", 4) == partition_of("acme", 4)
    assert rid_in_partition(0, "abc") == "abc"
    assert partition_of_rid(rid_in_partition(3, "abc")) == 3


def test_turns_give_partitions_picks_in_proportion_to_their_tenants() -> None:
    active = [300, 100, 0]
    turns = PartitionTurns("worker-1")
    served: Counter[int] = Counter()
    probes: Counter[int] = Counter()
    for _ in range(4000):
        for index in turns.order(3):
            taken = min(4, active[index])
            turns.served(index, taken, active[index])
            probes[index] += 1
            if taken:
                served[index] += taken
                break
    assert 2.7 < served[0] / served[1] < 3.3
    # The empty partition is probed about as often as one tenant of the others is served.
    assert probes[2] < (served[0] + served[1]) / 400 * 2


def test_workers_start_on_different_partitions() -> None:
    firsts = {PartitionTurns(f"worker-{i}").order(3)[0] for i in range(30)}
    assert firsts == {0, 1, 2}
    assert {preferred_partition(f"worker-{i}", 3) for i in range(30)} == firsts
