"""FairRedisBroker on the real Redis: the scheduling rule (docs/design.md) and Dramatiq's guarantees."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Message, Worker

from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.brokers.fair_redis_liveness import GONE_GRACE
from dramatiq_fairway.middlewares.dead_letters import DeadLetters
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import FairnessSettings, Settings

from ..conftest import REDIS_URL, disconnect, redis_for_tests
from ..support.fair_support import delete_namespace, fair_broker
from ..support.helpers import dramatiq_command, settings_env, wait_for

BrokerFactory = Callable[..., FairRedisBroker]


@pytest.fixture
def make_broker(namespace: str, short_tmp: Path) -> Iterator[BrokerFactory]:
    """Build FairRedisBrokers on the test's namespace; close them and delete their keys after."""
    brokers: list[FairRedisBroker] = []

    def make(clock: Callable[[], int] | None = None, **fairness: Any) -> FairRedisBroker:
        settings = Settings(
            broker="redis",
            redis_url=REDIS_URL,
            namespace=namespace,
            state_url=REDIS_URL,
            data_dir=short_tmp,
            fairness=FairnessSettings(**fairness),
        )
        broker = fair_broker(settings)
        broker.clock = clock
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()
    client = redis_for_tests()
    delete_namespace(client, namespace)
    client.close()


def push(broker: FairRedisBroker, queue: str, level: Priority, tenant: str, n: int, *, start: int = 0) -> None:
    """Enqueue ``n`` messages (args: level name, tenant, index) without going through an actor."""
    for i in range(start, start + n):
        message = Message(
            queue_name=queue,
            actor_name="job",
            args=(level.name, tenant, i),
            kwargs={},
            options={"priority_level": int(level), "tenant": tenant},
        )
        broker.enqueue(message)


def take(broker: FairRedisBroker, queue: str, n: int, batch: int = 1) -> list[tuple[str, str, int]]:
    """Fetch ``n`` messages ``batch`` at a time and ack them; their (level, tenant, index)."""
    got: list[tuple[str, str, int]] = []
    while len(got) < n:
        pairs = broker.fetch(queue, min(batch, n - len(got)))
        if not pairs:
            break
        broker.settle(queue, "ack", [rid for rid, _ in pairs])
        got += [tuple(Message.decode(body).args) for _, body in pairs]  # type: ignore[misc]
    return got


def test_fifo_within_level_and_tenant(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker()
    for i in range(30):
        level = random.choice(list(Priority))
        push(broker, queue_name, level, f"t{i % 3}", 1, start=i)
    got = take(broker, queue_name, 30, batch=4)
    assert len(got) == 30
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for level, tenant, index in got:
        by_key[(level, tenant)].append(index)
    assert all(indices == sorted(indices) for indices in by_key.values())


def test_a_large_fetch_returns_every_message_once(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker()
    broker.enqueue_many(
        Message(queue_name=queue_name, actor_name="job", args=(i,), kwargs={}, options={"tenant": f"t{i % 7}"})
        for i in range(2500)
    )
    pairs = broker.fetch(queue_name, 3000)
    assert len({rid for rid, _ in pairs}) == 2500
    assert sorted(Message.decode(body).args[0] for _, body in pairs) == list(range(2500))


def test_hold_back_moves_the_message_to_the_delay_queue_once(make_broker: BrokerFactory, queue_name: str) -> None:
    broker, other = make_broker(), make_broker()
    push(broker, queue_name, Priority.LOW, "acme", 1)
    [(rid, body)] = broker.fetch(queue_name, 1)
    message = Message.decode(body)
    message.options["redis_message_id"] = rid
    before = int(time.time() * 1000)
    broker.hold_back(message, 60_000)
    # A second hold of the same message (e.g. after it was recovered elsewhere) changes nothing.
    broker.hold_back(message, 60_000)
    assert broker.queue_depths(queue_name) == [
        {"queue": queue_name, "priority_level": "LOW", "tenant": "acme", "ready": 0, "delayed": 1, "in_flight": 0}
    ]
    [(_, waiting)] = other.fetch(f"{queue_name}.DQ", 10)
    held = Message.decode(waiting)
    assert held.queue_name == f"{queue_name}.DQ"
    assert held.message_id == message.message_id
    assert held.options["eta"] >= before + 60_000


def test_level_rule_sequence_and_critical_first(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker()
    for level in (Priority.HIGH, Priority.NORMAL, Priority.LOW, Priority.BATCH):
        push(broker, queue_name, level, "t", 20)
    first = [level[0] for level, _, _ in take(broker, queue_name, 12)]
    assert "".join(first) == "HHHNLBHHHNLB"
    push(broker, queue_name, Priority.CRITICAL, "t", 2)
    assert [level for level, _, _ in take(broker, queue_name, 3)] == ["CRITICAL", "CRITICAL", "HIGH"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_head_of_any_waiting_level_is_served_within_seven_picks(
    make_broker: BrokerFactory, queue_name: str, seed: int
) -> None:
    broker = make_broker()
    rng = random.Random(seed)
    waiting_since: dict[str, int] = {}
    worst = 0
    for pick in range(300):
        for _ in range(rng.randint(0, 2)):
            level = rng.choice([Priority.HIGH, Priority.HIGH, Priority.NORMAL, Priority.LOW, Priority.BATCH])
            push(broker, queue_name, level, rng.choice("abc"), 1)
        depth = Counter()
        for row in broker.queue_depths(queue_name):
            depth[row["priority_level"]] += row["ready"]
        for level in ("HIGH", "NORMAL", "LOW", "BATCH"):
            if depth[level]:
                waiting_since.setdefault(level, pick)
            else:
                waiting_since.pop(level, None)
        served = take(broker, queue_name, 1)
        if served:
            level = served[0][0]
            worst = max(worst, pick - waiting_since.pop(level) + 1)
    assert 0 < worst <= 7


def test_drr_shares_follow_weights(make_broker: BrokerFactory, queue_name: str) -> None:
    weights = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 0.5}
    broker = make_broker(weights=weights)
    broker.enqueue_many(
        Message(queue_name=queue_name, actor_name="job", args=(tenant, i), kwargs={}, options={"tenant": tenant})
        for tenant in weights
        for i in range(5000)
    )
    served: Counter[str] = Counter()
    for _ in range(100):
        pairs = broker.fetch(queue_name, 100)
        served.update(Message.decode(body).args[0] for _, body in pairs)
        broker.settle(queue_name, "ack", [rid for rid, _ in pairs])
    total = sum(weights.values())
    assert sum(served.values()) == 10_000
    for tenant, weight in weights.items():
        assert served[tenant] / 10_000 == pytest.approx(weight / total, rel=0.01)


def test_a_batch_fetch_picks_and_leaves_the_keys_as_single_fetches(
    make_broker: BrokerFactory, queue_name: str, namespace: str
) -> None:
    # A fetch keeps deficits, ring heads, FIFO sizes and aging due times in memory while it picks
    # (fair_redis.lua): the order served and the scheduling keys must be those of one pick per call.
    now = [5_000_000]
    broker = make_broker(clock=lambda: now[0], weights={"a": 1.0, "b": 2.0, "c": 0.5}, max_wait=60)
    queues = (f"{queue_name}_batch", f"{queue_name}_single")
    for queue in queues:
        for index, (level, tenant, n) in enumerate(
            [(Priority.NORMAL, "a", 9), (Priority.NORMAL, "b", 4), (Priority.LOW, "c", 5), (Priority.HIGH, "a", 3)]
        ):
            push(broker, queue, level, tenant, n, start=100 * index)
    client = redis_for_tests()
    try:
        for step in range(3):
            now[0] += 20_000  # at the last step the heads have waited max_wait: aging runs too
            batch = take(broker, queues[0], 7, batch=7)
            single = take(broker, queues[1], 7, batch=1)
            assert batch == single, step
            assert _scheduling_keys(client, namespace, queues[0]) == _scheduling_keys(client, namespace, queues[1])
    finally:
        client.close()


def _scheduling_keys(client: redis.Redis, namespace: str, queue: str) -> dict[str, Any]:
    prefix = f"{{{namespace}:{queue}}}"
    dumped: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{prefix}:*"):
        name = key.decode()[len(prefix) :]
        kind = client.type(key).decode()
        if name in (":msgs", ":meta") or name.startswith(":acks:"):
            continue  # message ids differ between the two queues
        if kind == "hash":
            dumped[name] = client.hgetall(key)
        elif kind == "list":
            dumped[name] = client.lrange(key, 0, -1)
        elif kind == "zset":
            dumped[name] = client.zrange(key, 0, -1, withscores=True) if ":fifo:" not in name else client.zcard(key)
        else:
            dumped[name] = client.get(key)
    return dumped


def test_aging_moves_one_level_per_max_wait_never_to_critical(make_broker: BrokerFactory, queue_name: str) -> None:
    now = [1_000_000]
    broker = make_broker(clock=lambda: now[0], max_wait=10)
    push(broker, queue_name, Priority.BATCH, "old", 1)
    push(broker, queue_name, Priority.HIGH, "high", 1)
    seen = []
    for elapsed in (9_999, 10_000, 20_000, 30_000, 100_000):
        now[0] = 1_000_000 + elapsed
        broker.fetch(queue_name, 0)
        seen.append(broker.ready_by_level(queue_name))
    assert seen == [
        {Priority.HIGH: 1, Priority.BATCH: 1},
        {Priority.HIGH: 1, Priority.LOW: 1},
        {Priority.HIGH: 1, Priority.NORMAL: 1},
        {Priority.HIGH: 2},
        {Priority.HIGH: 2},
    ]
    # Queue depths keep reporting the level the message was sent with.
    assert {row["priority_level"] for row in broker.queue_depths(queue_name)} == {"HIGH", "BATCH"}
    assert sorted(t for _, t, _ in take(broker, queue_name, 2)) == ["high", "old"]


def test_no_message_lost_or_duplicated_under_concurrency(make_broker: BrokerFactory, queue_name: str) -> None:
    producers = [make_broker() for _ in range(3)]
    consumers = [make_broker() for _ in range(3)]
    seen: list[tuple[str, str, int]] = []
    lock = threading.Lock()
    done = threading.Event()

    def produce(broker: FairRedisBroker, tenant: str) -> None:
        for i in range(300):
            push(broker, queue_name, Priority(i % 5 + 1), tenant, 1, start=i)

    def consume(broker: FairRedisBroker) -> None:
        while not done.is_set() or broker.join_size(queue_name):
            got = take(broker, queue_name, 7, batch=7)
            with lock:
                seen.extend(got)

    threads = [threading.Thread(target=produce, args=(b, f"t{i}")) for i, b in enumerate(producers)]
    threads += [threading.Thread(target=consume, args=(b,)) for b in consumers]
    for thread in threads:
        thread.start()
    for thread in threads[:3]:
        thread.join()
    done.set()
    for thread in threads[3:]:
        thread.join(timeout=30)
    assert len(seen) == 900
    assert len(set(seen)) == 900


def test_pause_resume_and_depths(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker()
    push(broker, queue_name, Priority.LOW, "acme", 2)
    push(broker, queue_name, Priority.HIGH, "zed", 1)
    broker.pause(queue_name)
    assert broker.paused_queues() == [queue_name]
    assert broker.fetch(queue_name, 5) == []
    broker.resume(queue_name)
    assert broker.paused_queues() == []
    held = broker.fetch(queue_name, 1)
    assert len(held) == 1
    assert broker.queue_depths(queue_name) == [
        {"queue": queue_name, "priority_level": "HIGH", "tenant": "zed", "ready": 0, "delayed": 0, "in_flight": 1},
        {"queue": queue_name, "priority_level": "LOW", "tenant": "acme", "ready": 2, "delayed": 0, "in_flight": 0},
    ]
    broker.flush(queue_name)
    assert broker.queue_depths(queue_name) == []
    assert broker.join_size(queue_name) == 0


def test_worker_runs_delays_dead_letters_and_joins(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker()
    # Without the dead-letter store a failed message goes to .XQ, as on stock Dramatiq (with the
    # store it is recorded there and acked: tests/middlewares/test_dead_letters.py).
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, DeadLetters)]
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def job(name: str) -> None:
        if name == "bad":
            raise RuntimeError("boom")
        ran.append(name)

    job.send_with_options(args=("later",), delay=300, tenant="acme", priority_level="low")
    job.send("now")
    job.send("bad")
    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        wait_for(lambda: len(ran) == 2, timeout=10)
        broker.join(queue_name, timeout=10_000)
        broker.join(f"{queue_name}.DQ", timeout=10_000)
    finally:
        worker.stop(timeout=10_000)
    assert ran == ["now", "later"]
    prefix = broker._queue_prefix(queue_name)
    assert broker.client.zcard(f"{prefix}:xq") == 1
    assert broker.queue_depths(queue_name) == []


def test_shutdown_requeues_unstarted_messages(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker()
    started: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def slow(i: int) -> None:
        started.append(i)
        # Busy until the worker is told to stop, so the other messages are still unstarted then.
        wait_for(lambda: not threading.current_thread().running, timeout=10)

    for i in range(6):
        slow.send(i)
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    wait_for(lambda: started)
    worker.stop(timeout=10_000)
    depths = broker.queue_depths(queue_name)
    assert sum(row["in_flight"] for row in depths) == 0
    assert sum(row["ready"] for row in depths) == 6 - len(started)
    assert broker.client.scard(f"{broker._queue_prefix(queue_name)}:acks:{broker.broker_id}") == 0


def test_sigkilled_worker_messages_are_recovered_within_ten_seconds(
    make_broker: BrokerFactory, queue_name: str, namespace: str, short_tmp: Path
) -> None:
    broker = make_broker()
    settings = broker.settings
    env = {**settings_env(settings), "FAIRWAY_TEST_QUEUE": queue_name}
    ran_key = f"{namespace}:test:ran"

    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name="record")
    def record(value: int, seconds: float = 0.0) -> None:
        raise AssertionError("runs in the dramatiq command only")

    for value in range(4):
        record.send_with_options(args=(value, 60.0), tenant=f"t{value}")
    with dramatiq_command("tests.support.fair_app", env, threads=2, log_file=short_tmp / "worker.log"):
        first = wait_for(lambda: broker.client.lindex(ran_key, 0), timeout=20)
        pid = json.loads(first)[0]
        wait_for(lambda: sum(r["in_flight"] for r in broker.queue_depths(queue_name)) == 4)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: broker.recover_dead_workers() or sum(r["ready"] for r in broker.queue_depths(queue_name)) == 4)
        assert time.monotonic() - killed_at < 10
    rows = broker.queue_depths(queue_name)
    assert {row["tenant"]: (row["ready"], row["in_flight"]) for row in rows} == {f"t{v}": (1, 0) for v in range(4)}


def test_silent_worker_is_recovered_only_once_its_connections_are_gone(
    make_broker: BrokerFactory, queue_name: str
) -> None:
    live, silent = make_broker(), make_broker()
    now = [1000.0]
    live.liveness.clock = lambda: now[0]
    push(live, queue_name, Priority.NORMAL, "t", 2)
    assert len(silent.fetch(queue_name, 2)) == 2
    server_ms = int(live.client.time()[0]) * 1000
    live.client.zadd(live._workers_key("heartbeats"), {silent.broker_id: server_ms - 5000})
    live.client.sadd(live._workers_key(f"queues:{silent.broker_id}"), queue_name)
    # Stale heartbeat, connection open: a busy worker (a C extension holding the GIL), not dead.
    assert live.recover_dead_workers() == 0
    # Connections gone for less than GONE_GRACE (a Redis restart): reconnecting keeps it alive.
    disconnect(silent.client)
    assert live.recover_dead_workers() == 0
    now[0] += GONE_GRACE - 0.1
    assert live.recover_dead_workers() == 0
    # A live worker's next heartbeat reconnects (on a cluster, to the heartbeats key's node).
    silent.client.zscore(silent._workers_key("heartbeats"), silent.broker_id)
    now[0] += GONE_GRACE
    assert live.recover_dead_workers() == 0
    # Gone for good: recovered once GONE_GRACE has passed, not before.
    disconnect(silent.client)
    assert live.recover_dead_workers() == 0
    now[0] += GONE_GRACE - 0.1
    assert live.recover_dead_workers() == 0
    now[0] += 0.1
    assert live.recover_dead_workers() == 2
    assert [(r["ready"], r["in_flight"]) for r in live.queue_depths(queue_name)] == [(2, 0)]


def test_runs_under_the_dramatiq_command(make_broker: BrokerFactory, queue_name: str, namespace: str) -> None:
    broker = make_broker()
    env = {**settings_env(broker.settings), "FAIRWAY_TEST_QUEUE": queue_name}

    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name="record")
    def record(value: int, seconds: float = 0.0) -> None:
        raise AssertionError("runs in the dramatiq command only")

    for value in range(10):
        record.send_with_options(args=(value,), priority_level=value % 5 + 1, tenant=f"t{value % 3}")
    with dramatiq_command("tests.support.fair_app", env, processes=2, threads=2):
        broker.join(queue_name, timeout=30_000)
    values = sorted(json.loads(item)[1] for item in broker.client.lrange(f"{namespace}:test:ran", 0, -1))
    assert values == list(range(10))


def test_settles_made_while_the_cache_is_delivered_go_with_the_next_fetch(
    make_broker: BrokerFactory, queue_name: str
) -> None:
    broker = make_broker()

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job() -> None:
        pass

    for _ in range(40):
        job.send()
    consumer = broker.consume(queue_name, prefetch=16, timeout=100)
    first = next(consumer)  # fetches 16 into the cache
    assert first is not None
    consumer.ack(first)
    taken = [next(consumer) for _ in range(15)]
    # Delivered from the cache: the ack waits for the next fetch, no round trip of its own.
    assert broker.settles_waiting(queue_name)
    assert all(message is not None for message in taken)
    assert next(consumer) is not None  # the cache is empty: one fetch, carrying the ack
    assert not broker.settles_waiting(queue_name)
    consumer.close()
