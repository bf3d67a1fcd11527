"""``FAIRWAY_FAIRNESS__PARTITIONS`` on the real Redis: a queue split over hash-tagged partitions
(docs/design.md, "Partitions"): FIFO per tenant, the level rule per partition, a flood tenant
against small ones, recovery of a dead worker's messages, delayed messages, and the readers."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Message, Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name
from redis.crc import key_slot

from dramatiq_fairway.brokers import fair_redis
from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.cli import main
from dramatiq_fairway.ops.migrate import migrate
from dramatiq_fairway.ops.queues import queue_depths
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import FairnessSettings, Settings
from dramatiq_fairway.store.partitions import partition_of, partition_of_rid, partition_prefix
from dramatiq_fairway.store.scripts import ScriptCall, run_scripts

from ..conftest import REDIS_URL, SINGLE_REDIS_URL, disconnect, redis_for_tests
from ..support.fair_support import delete_namespace, fair_broker
from ..support.helpers import dramatiq_command, settings_env, wait_for

BrokerFactory = Callable[..., FairRedisBroker]
Job = tuple[str, str, int]


@pytest.fixture
def make_broker(namespace: str, short_tmp: Path) -> Iterator[BrokerFactory]:
    brokers: list[FairRedisBroker] = []

    def make(partitions: int = 3, url: str = REDIS_URL) -> FairRedisBroker:
        settings = Settings(
            broker="redis",
            redis_url=url,
            namespace=namespace,
            state_url=url,
            data_dir=short_tmp,
            fairness=FairnessSettings(partitions=partitions),
        )
        broker = fair_broker(settings)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()
    for client in (redis_for_tests(), redis.Redis.from_url(SINGLE_REDIS_URL)):
        delete_namespace(client, namespace)
        disconnect(client)


def push(broker: FairRedisBroker, queue: str, level: Priority, tenant: str, n: int, *, start: int = 0) -> None:
    for i in range(start, start + n):
        options = {"priority_level": int(level), "tenant": tenant}
        broker.enqueue(
            Message(queue_name=queue, actor_name="job", args=(level.name, tenant, i), kwargs={}, options=options)
        )


def take(broker: FairRedisBroker, queue: str, batch: int = 1) -> list[Job]:
    """Fetch until the queue is empty, ``batch`` at a time, acking each batch; (level, tenant, index)."""
    got: list[Job] = []
    while pairs := broker.fetch(queue, batch):
        broker.settle(queue, "ack", [rid for rid, _ in pairs])
        got += [tuple(Message.decode(body).args) for _, body in pairs]
    return got


def test_one_partition_keeps_the_queue_prefix_and_more_spread_over_the_slot_space() -> None:
    assert partition_prefix("ns", "q", 0, 1) == "{ns:q}"
    prefixes = [partition_prefix("ns", "q", index, 3) for index in range(3)]
    assert prefixes[0] == "{ns:q}"
    # One per third of the slots: one per master of a 3-master cluster as `--cluster create` lays it out.
    thirds = {key_slot(prefix.encode()) * 3 // 16384 for prefix in prefixes}
    assert thirds == {0, 1, 2}
    assert partition_of_rid("2:abc") == 2
    assert partition_of_rid("abc") == 0


def test_each_tenant_keeps_its_fifo_across_partitions(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker()
    tenants = [f"t{i}" for i in range(12)]
    assert len({partition_of(tenant, 3) for tenant in tenants}) == 3
    for i in range(240):
        push(broker, queue_name, random.choice(list(Priority)), random.choice(tenants), 1, start=i)
    got = take(broker, queue_name, batch=4)
    assert len(got) == 240
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for level, tenant, index in got:
        by_key[(level, tenant)].append(index)
    assert all(indices == sorted(indices) for indices in by_key.values())
    for index, prefix in enumerate(broker._prefixes(queue_name)):
        assert broker.client.exists(prefix + ":seq"), f"partition {index} got no message"


def test_the_level_rule_is_exact_inside_each_partition(make_broker: BrokerFactory, queue_name: str) -> None:
    """Each partition hands out its messages in exactly the order one partition alone would."""
    split, single = make_broker(3), make_broker(1)
    plan = [(random.choice(list(Priority)), f"t{random.randrange(9)}") for _ in range(200)]
    for i, (level, tenant) in enumerate(plan):
        push(split, queue_name, level, tenant, 1, start=i)
    got = take(split, queue_name, batch=3)
    for index in range(3):
        alone = f"{queue_name}_p{index}"
        for i, (level, tenant) in enumerate(plan):
            if partition_of(tenant, 3) == index:
                push(single, alone, level, tenant, 1, start=i)
        expected = take(single, alone, batch=1)
        assert [job for job in got if partition_of(job[1], 3) == index] == expected


def test_a_flood_tenant_does_not_hold_back_small_tenants(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker(3)
    push(broker, queue_name, Priority.NORMAL, "flood", 1000)
    for small in range(10):
        push(broker, queue_name, Priority.NORMAL, f"small{small}", 5)
    got = take(broker, queue_name, batch=4)
    assert len(got) == 1050
    last_small = max(position for position, job in enumerate(got) if job[1] != "flood")
    assert last_small < 0.2 * len(got), last_small


def test_a_dead_workers_messages_come_back_from_every_partition(make_broker: BrokerFactory, queue_name: str) -> None:
    dead, alive = make_broker(), make_broker()
    for tenant in range(9):
        push(dead, queue_name, Priority.NORMAL, f"t{tenant}", 4)
    dead.client.sadd(dead._workers_key(f"queues:{dead.broker_id}"), queue_name)
    held: list[str] = []
    while pairs := dead.fetch(queue_name, 3):
        held += [rid for rid, _body in pairs]
    assert len(held) == 36
    assert {partition_of_rid(rid) for rid in held} == {0, 1, 2}
    assert sum(row["in_flight"] for row in alive.queue_depths(queue_name)) == 36
    assert alive.liveness.recover(dead.broker_id) == 36
    got = take(alive, queue_name, batch=5)
    assert sorted(got) == sorted(("NORMAL", f"t{tenant}", i) for tenant in range(9) for i in range(4))


def test_delayed_and_held_messages_stay_in_their_tenants_partition(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker()
    for tenant in range(6):
        options = {"tenant": f"t{tenant}"}
        broker.enqueue(Message(queue_name=queue_name, actor_name="job", args=(), kwargs={}, options=options), delay=1)
    assert broker.join_size(dq_name(queue_name)) == 6
    assert sum(row["delayed"] for row in broker.queue_depths(queue_name)) == 6
    fetched: list[tuple[str, bytes]] = []
    while pairs := broker.fetch(dq_name(queue_name), 2):
        fetched += pairs
    assert len(fetched) == 6
    for rid, body in fetched:
        tenant = Message.decode(body).options["tenant"]
        assert partition_of_rid(rid) == partition_of(tenant, 3)
    broker.settle(dq_name(queue_name), "ack", [rid for rid, _ in fetched])
    assert broker.join_size(dq_name(queue_name)) == 0
    # A message held back at the start goes to the delay queue of its own partition.
    push(broker, queue_name, Priority.NORMAL, "t1", 1)
    [(rid, body)] = broker.fetch(queue_name, 1)
    message = Message.decode(body).copy(options={"redis_message_id": rid})
    broker.hold_back(message, 60_000)
    [(copy_rid, _)] = broker.fetch(dq_name(queue_name), 1)
    assert partition_of_rid(copy_rid) == partition_of_rid(rid)
    assert partition_of_rid(rid) == partition_of("t1", 3)


def test_pause_depths_and_flush_see_every_partition(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker()
    for tenant in range(9):
        push(broker, queue_name, Priority.HIGH, f"t{tenant}", 2)
    assert broker.ready_by_level(queue_name) == {Priority.HIGH: 18}
    broker.pause(queue_name)
    assert broker.fetch(queue_name, 5) == []
    assert queue_name in broker.paused_queues()
    broker.resume(queue_name)
    assert len(broker.fetch(queue_name, 1)) == 1
    broker.flush(queue_name)
    assert broker.join_size(queue_name) == 0
    assert broker.queue_depths(queue_name) == []


def test_fairway_queues_totals_every_partition_without_the_setting(
    make_broker: BrokerFactory,
    queue_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broker = make_broker()
    sent = {f"t{tenant}": tenant + 1 for tenant in range(9)}
    for tenant, count in sent.items():
        push(broker, queue_name, Priority.NORMAL, tenant, count)
    rows = queue_depths(broker, broker.settings, [queue_name])
    assert {row.tenant: row.ready for row in rows} == sent
    # The operator's shell has no FAIRWAY_FAIRNESS__PARTITIONS: the stored partitions are read.
    for name, value in settings_env(broker.settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FAIRWAY_FAIRNESS__PARTITIONS", raising=False)
    capsys.readouterr()
    assert main(["queues", "--json", queue_name]) == 0
    listed: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    assert {row["tenant"]: row["ready"] for row in listed} == sent


def test_migrate_puts_each_stock_message_in_its_tenants_partition(
    make_broker: BrokerFactory, queue_name: str, namespace: str
) -> None:
    # Stock Dramatiq runs on one Redis, and migrate refuses a cluster.
    broker = make_broker(url=SINGLE_REDIS_URL)
    stock = RedisBroker(url=SINGLE_REDIS_URL, namespace=f"{namespace}:stock")
    try:
        for i in range(18):
            options = {"tenant": f"t{i % 6}"}
            stock.enqueue(Message(queue_name=queue_name, actor_name="job", args=(i,), kwargs={}, options=options))
    finally:
        stock.close()
    [report] = migrate(broker, [queue_name], stock_namespace=f"{namespace}:stock")
    assert report.ready == 18
    fetched: list[tuple[str, bytes]] = []
    while pairs := broker.fetch(queue_name, 4):
        fetched += pairs
    assert len(fetched) == 18
    for rid, body in fetched:
        assert partition_of_rid(rid) == partition_of(Message.decode(body).options["tenant"], 3)


def test_a_worker_runs_every_job_of_every_partition_once(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker()
    ran: list[tuple[str, int]] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name=queue_name, tenant_from="tenant")
    def job(tenant: str, i: int) -> None:
        with lock:
            ran.append((tenant, i))

    sent = [(f"t{i % 9}", i) for i in range(90)]
    for tenant, i in sent:
        job.send_with_options(args=(tenant, i), delay=50 if i % 10 == 0 else None)
    worker = Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    try:
        broker.join(queue_name, timeout=30_000)
        wait_for(lambda: len(ran) >= len(sent), timeout=30)
    finally:
        worker.stop(timeout=10_000)
    assert sorted(ran) == sorted(sent)
    assert broker.queue_depths(queue_name) == []


@pytest.mark.chaos
def test_a_sigkilled_workers_messages_come_back_to_their_partitions(
    make_broker: BrokerFactory, queue_name: str, namespace: str, short_tmp: Path
) -> None:
    broker = make_broker(3)
    tenants = ["t0", "t1", "t4", "t5"]
    assert {partition_of(tenant, 3) for tenant in tenants} == {0, 1, 2}
    env = {**settings_env(broker.settings), "FAIRWAY_TEST_QUEUE": queue_name, "FAIRWAY_FAIRNESS__PARTITIONS": "3"}

    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name="record")
    def record(value: int, seconds: float = 0.0) -> None:
        raise AssertionError("runs in the dramatiq command only")

    for value, tenant in enumerate(tenants):
        record.send_with_options(args=(value, 60.0), tenant=tenant)
    with dramatiq_command("tests.support.fair_app", env, threads=2, log_file=short_tmp / "worker.log"):
        first = wait_for(lambda: broker.client.lindex(f"{namespace}:test:ran", 0), timeout=20)
        pid = json.loads(first)[0]
        wait_for(lambda: sum(r["in_flight"] for r in broker.queue_depths(queue_name)) == 4)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: broker.recover_dead_workers() or sum(r["ready"] for r in broker.queue_depths(queue_name)) == 4)
        assert time.monotonic() - killed_at < 10
    rows = broker.queue_depths(queue_name)
    assert {row["tenant"]: (row["ready"], row["in_flight"]) for row in rows} == dict.fromkeys(tenants, (1, 0))
    for tenant in tenants:
        prefix = broker._prefixes(queue_name)[partition_of(tenant, 3)]
        assert broker.client.exists(f"{prefix}:fifo:3:{tenant}")


def test_a_fetch_reply_lost_on_another_partition_loses_no_message(
    make_broker: BrokerFactory, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = make_broker(3)
    ran: list[int] = []
    lost: list[object] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, tenant_from="tenant")
    def job(tenant: str, i: int) -> None:
        ran.append(i)

    for i in range(12):
        job.send(f"t{i % 6}", i)

    def reply_lost_once(client: redis.Redis, calls: list[ScriptCall], **options: Any) -> list[Any]:
        # Redis ran the fetch (its messages now in our ack set of a partition > 0), the reply is lost.
        replies = run_scripts(client, calls, **options)
        fetch = calls and calls[-1].args[0] == "fetch" and calls[-1].keys[0] != broker._queue_prefix(queue_name)
        if fetch and replies[-1][0] and not lost:
            lost.append(replies[-1])
            raise redis.ConnectionError("Connection closed by server.")
        return replies

    monkeypatch.setattr(fair_redis, "run_scripts", reply_lost_once)
    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        wait_for(lambda: len(set(ran)) == 12, timeout=20)
    finally:
        worker.stop(timeout=10_000)
    assert lost
    assert sorted(set(ran)) == list(range(12))


def test_raising_the_count_keeps_the_earlier_partitions_and_drains_them(
    make_broker: BrokerFactory, queue_name: str
) -> None:
    before, after, reader = make_broker(2), make_broker(4), make_broker(1)
    for tenant in range(8):
        push(before, queue_name, Priority.NORMAL, f"t{tenant}", 2)
    two = before._prefixes(queue_name)
    four = after._prefixes(queue_name)
    assert four[:2] == two
    assert len(set(four)) == 4
    assert reader._prefixes(queue_name) == four
    for tenant in range(8):
        push(after, queue_name, Priority.NORMAL, f"t{tenant}", 1, start=2)
    assert sum(row["ready"] for row in reader.queue_depths(queue_name)) == 24
    got = take(after, queue_name, batch=3)
    assert sorted(got) == sorted(("NORMAL", f"t{t}", i) for t in range(8) for i in range(3))
