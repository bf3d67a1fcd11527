"""Per-tenant limits (docs/limits.md): the dispatch script with an injected clock, the store, the CLI
verbs and the consumer-side limiter used with RabbitMQ."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Message, MessageProxy, Worker
from dramatiq.brokers.stub import StubBroker

from dramatiq_fairway import setup
from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.cli import limits as limits_cli
from dramatiq_fairway.errors import ConfigError
from dramatiq_fairway.middlewares.limits import CAP_RECHECK_MS, TenantLimiter, drain_throttled, tenant_in_flight
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import FairnessSettings, LimitSettings, Settings, TenantLimit
from dramatiq_fairway.store.limits import LEASE_MS, TenantLimits

from ..brokers.test_fair_broker import push
from ..conftest import REDIS_URL, redis_for_tests
from ..support.fair_support import delete_namespace, fair_broker
from ..support.helpers import wait_for

BrokerFactory = Callable[..., FairRedisBroker]


class Clock:
    """The "now" the dispatch script is given, in ms."""

    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture(autouse=True)
def cleanup(namespace: str) -> Iterator[None]:
    """Delete every key of the test's namespace, the hash-tagged broker and limits keys included."""
    yield
    client = redis_for_tests()
    delete_namespace(client, namespace)
    client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_broker(namespace: str, short_tmp: Path, clock: Clock) -> Iterator[BrokerFactory]:
    brokers: list[FairRedisBroker] = []

    def make(limits: LimitSettings | None = None, **fairness: Any) -> FairRedisBroker:
        settings = Settings(
            broker="redis",
            redis_url=REDIS_URL,
            namespace=namespace,
            state_url=REDIS_URL,
            data_dir=short_tmp,
            fairness=FairnessSettings(**fairness),
            limits=limits or LimitSettings(),
        )
        broker = fair_broker(settings)
        broker.clock = clock
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()


def capped(tenant: str, **fields: Any) -> LimitSettings:
    return LimitSettings(tenants={tenant: TenantLimit(**fields)})


def fetch(broker: FairRedisBroker, queue: str, n: int) -> list[tuple[str, str]]:
    """Fetch up to ``n`` messages; (rid, tenant) of each."""
    return [(rid, Message.decode(body).args[1]) for rid, body in broker.fetch(queue, n)]


def tenants(pairs: list[tuple[str, str]]) -> Counter[str]:
    return Counter(tenant for _, tenant in pairs)


def ack(broker: FairRedisBroker, queue: str, pairs: list[tuple[str, str]]) -> None:
    broker.settle(queue, "ack", [rid for rid, _ in pairs])


# The dispatch script.


def test_capped_tenant_is_skipped_until_a_slot_frees(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker(capped("a", max_concurrency=2))
    push(broker, queue_name, Priority.NORMAL, "a", 10)
    push(broker, queue_name, Priority.NORMAL, "b", 10)
    first = fetch(broker, queue_name, 8)
    assert tenants(first) == {"a": 2, "b": 6}
    assert tenants(fetch(broker, queue_name, 8)) == {"b": 4}
    ack(broker, queue_name, [pair for pair in first if pair[1] == "a"][:1])
    assert tenants(fetch(broker, queue_name, 8)) == {"a": 1}
    assert broker.tenant_limits.in_flight(queue_name) == {"a": 2, "b": 10}


def test_cap_holds_across_fetches_and_workers(make_broker: BrokerFactory, queue_name: str) -> None:
    one, other = make_broker(capped("a", max_concurrency=3)), make_broker(capped("a", max_concurrency=3))
    push(one, queue_name, Priority.NORMAL, "a", 20)
    push(one, queue_name, Priority.NORMAL, "b", 20)
    held: list[tuple[str, str]] = []
    for broker in (one, other, one, other):
        held += fetch(broker, queue_name, 3)
    assert tenants(held) == {"a": 3, "b": 9}


def test_drr_deficit_is_kept_while_parked(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker(capped("a", max_concurrency=1), weights={"a": 3})
    push(broker, queue_name, Priority.NORMAL, "a", 5)
    push(broker, queue_name, Priority.NORMAL, "b", 5)
    deficits = broker._queue_prefix(queue_name) + f":deficit:{int(Priority.NORMAL)}"
    [first] = fetch(broker, queue_name, 1)
    assert first[1] == "a"
    assert float(broker.client.hget(deficits, "a")) == 2  # quantum 3, one served
    [second] = fetch(broker, queue_name, 1)
    assert second[1] == "b"  # a is at its cap: skipped, not charged
    assert float(broker.client.hget(deficits, "a")) == 2
    ack(broker, queue_name, [first])
    fetch(broker, queue_name, 2)
    # Back in the round, a spent its kept deficit (2 -> 1) instead of a fresh quantum (3 -> 2).
    assert float(broker.client.hget(deficits, "a")) == 1


def test_token_bucket_refills_from_the_script_clock(make_broker: BrokerFactory, queue_name: str, clock: Clock) -> None:
    broker = make_broker(capped("a", rate=2, burst=3))
    push(broker, queue_name, Priority.NORMAL, "a", 20)
    assert len(fetch(broker, queue_name, 10)) == 3  # the burst
    clock.ms += 499
    assert fetch(broker, queue_name, 10) == []  # a token needs 500 ms
    clock.ms += 1
    assert len(fetch(broker, queue_name, 10)) == 1
    clock.ms += 10_000
    assert len(fetch(broker, queue_name, 10)) == 3  # never more than the burst
    clock.ms += 1_000
    assert len(fetch(broker, queue_name, 10)) == 2
    assert broker.drain_throttled()[(queue_name, "a", "rate")] >= 3
    assert broker.drain_throttled() == {}


def test_rate_without_burst_allows_one_second_worth(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker(capped("a", rate=4))
    push(broker, queue_name, Priority.NORMAL, "a", 10)
    assert len(fetch(broker, queue_name, 10)) == 4


def test_blocked_level_does_not_stop_lower_levels(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker(capped("a", max_concurrency=1))
    push(broker, queue_name, Priority.HIGH, "a", 5)
    push(broker, queue_name, Priority.LOW, "b", 5)
    got = fetch(broker, queue_name, 4)
    assert tenants(got) == {"a": 1, "b": 3}
    assert broker.drain_throttled() == {(queue_name, "a", "concurrency"): 1}


def test_critical_is_exempt_unless_configured(make_broker: BrokerFactory, queue_name: str) -> None:
    exempt = make_broker(capped("a", max_concurrency=1))
    push(exempt, queue_name, Priority.CRITICAL, "a", 3)
    assert len(fetch(exempt, queue_name, 3)) == 3
    limited = make_broker(LimitSettings(tenants={"a": TenantLimit(max_concurrency=1)}, exempt_critical=False))
    other_queue = queue_name + "_c"
    push(limited, other_queue, Priority.CRITICAL, "a", 3)
    assert len(fetch(limited, other_queue, 3)) == 1


def test_recovering_a_dead_worker_gives_its_slots_back(make_broker: BrokerFactory, queue_name: str) -> None:
    dead, live = make_broker(capped("a", max_concurrency=2)), make_broker(capped("a", max_concurrency=2))
    push(dead, queue_name, Priority.NORMAL, "a", 6)
    dead.client.sadd(dead._workers_key(f"queues:{dead.broker_id}"), queue_name)
    assert len(fetch(dead, queue_name, 6)) == 2
    assert fetch(live, queue_name, 6) == []
    assert live.liveness.recover(dead.broker_id) == 2
    assert live.tenant_limits.in_flight(queue_name) == {}
    assert len(fetch(live, queue_name, 6)) == 2  # at its cap again, not at cap - 2


def test_requeue_and_hold_free_slots(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker(capped("a", max_concurrency=1))
    push(broker, queue_name, Priority.NORMAL, "a", 3)
    [(rid, _)] = fetch(broker, queue_name, 3)
    broker.settle(queue_name, "requeue", [rid])
    [(rid, _)] = fetch(broker, queue_name, 3)
    message = Message.decode(broker.client.hget(broker._queue_prefix(queue_name) + ":msgs", rid))
    message.options["redis_message_id"] = rid
    broker.hold_back(message, 60_000)
    assert len(fetch(broker, queue_name, 3)) == 1


def test_runtime_change_applies_on_the_next_fetch(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker(capped("a", max_concurrency=1))
    push(broker, queue_name, Priority.NORMAL, "a", 10)
    assert len(fetch(broker, queue_name, 10)) == 1
    assert fetch(broker, queue_name, 10) == []  # parked at its cap
    broker.tenant_limits.set("a", max_concurrency=4)
    assert len(fetch(broker, queue_name, 10)) == 3
    broker.tenant_limits.clear("a")
    broker.tenant_limits.set("a", queue_name, max_concurrency=1)
    assert fetch(broker, queue_name, 10) == []
    assert broker.tenant_limits.in_flight(queue_name) == {"a": 4}


def test_no_limits_no_parking(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker()
    push(broker, queue_name, Priority.NORMAL, "a", 5)
    assert len(fetch(broker, queue_name, 5)) == 5
    prefix = broker._queue_prefix(queue_name)
    assert broker.client.exists(prefix + ":limits", prefix + ":limits:version", prefix + ":limits:seen") == 0


# Settings and the store.


def test_store_list_set_clear(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker(LimitSettings(tenants={"a": TenantLimit(max_concurrency=2, rate=5)}))
    push(broker, queue_name, Priority.NORMAL, "a", 3)
    fetch(broker, queue_name, 1)
    store = broker.tenant_limits
    assert store.list() == [
        {
            "queue": queue_name,
            "tenant": "a",
            "max_concurrency": 2,
            "rate": 5.0,
            "burst": 5,
            "source": "settings",
            "in_flight": 1,
        }
    ]
    store.set("a", max_concurrency=1)
    store.set("b", queue_name, rate=0.5)
    rows = {row["tenant"]: row for row in store.list()}
    assert (rows["a"]["max_concurrency"], rows["a"]["rate"], rows["a"]["source"]) == (1, 5.0, "runtime")
    assert (rows["b"]["rate"], rows["b"]["burst"], rows["b"]["in_flight"]) == (0.5, 1, 0)
    assert store.clear("a") is True
    assert store.clear("a") is False
    assert {row["tenant"]: row["max_concurrency"] for row in store.list()} == {"a": 2, "b": None}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency: 0 input should be greater than or equal to 1"),
        ({"rate": -1.0}, "rate: -1.0 input should be greater than 0"),
        ({}, "give at least one of"),
    ],
)
def test_bad_values_name_the_field(make_broker: BrokerFactory, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        make_broker().tenant_limits.set("a", **fields)
    assert "\n" not in str(error.value)


# The CLI verbs.


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    parser = argparse.ArgumentParser()
    limits_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["limits", *argv, "--json"])
    args.func(args)
    return json.loads(capsys.readouterr().out)


def test_cli_set_list_clear(
    make_broker: BrokerFactory, queue_name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = make_broker()
    push(broker, queue_name, Priority.NORMAL, "a", 1)
    fetch(broker, queue_name, 1)
    monkeypatch.setenv("FAIRWAY_BROKER", "redis")
    monkeypatch.setenv("FAIRWAY_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("FAIRWAY_NAMESPACE", broker.namespace)
    assert run_cli(["set", "a", "--max-concurrency", "3", "--rate", "2.5"], capsys) == {
        "queue": None,
        "tenant": "a",
        "max_concurrency": 3,
        "rate": 2.5,
        "burst": None,
    }
    [row] = run_cli(["list"], capsys)
    assert (row["tenant"], row["max_concurrency"], row["burst"], row["in_flight"]) == ("a", 3, 3, 1)
    assert run_cli(["clear", "a"], capsys) == {"queue": None, "tenant": "a", "cleared": True}
    assert run_cli(["list"], capsys) == []


# Consumer-side limits (RabbitMQ) and the same acceptance on both brokers, in process.


def test_a_worker_starting_while_an_operator_sets_a_limit_keeps_the_operator_change(
    state_client: redis.Redis, namespace: str, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's ``install`` reads the operator's changes, then writes them into the queue's layer:
    a ``limits set`` landing between the two must not be overwritten by the stale read."""
    operator = TenantLimits(state_client, namespace, "rabbitmq")
    worker = TenantLimits(state_client, namespace, "rabbitmq")
    settings = LimitSettings(tenants={"a": TenantLimit(max_concurrency=4)})
    worker.install(queue_name, settings)
    read_operator_changes = worker._operator_layer

    def operator_sets_after_the_read(queue: str) -> Any:
        layer = read_operator_changes(queue)
        operator.set("a", queue_name, max_concurrency=1)
        return layer

    monkeypatch.setattr(worker, "_operator_layer", operator_sets_after_the_read)
    worker.install(queue_name, settings)
    assert operator.effective(queue_name, ["a"])["a"].max_concurrency == 1


def test_leases_cap_expire_and_renew(state_client: redis.Redis, namespace: str, queue_name: str) -> None:
    store = TenantLimits(state_client, namespace, "rabbitmq")
    store.install(queue_name, LimitSettings(tenants={"a": TenantLimit(max_concurrency=2)}))
    now = 5_000_000
    assert store.acquire(queue_name, "a", "m1", now=now) == ("", 0)
    assert store.acquire(queue_name, "a", "m2", now=now) == ("", 0)
    assert store.acquire(queue_name, "a", "m3", now=now) == ("c", 0)
    assert store.acquire(queue_name, "a", "m1", now=now) == ("", 0)  # the same message again
    store.release(queue_name, "a", "m1")
    assert store.acquire(queue_name, "a", "m3", now=now) == ("", 0)
    assert store.in_flight(queue_name, now=now) == {"a": 2}
    # m2's worker died (no renewal): its slot comes back when the lease expires.
    store.renew(queue_name, [("a", "m3")], now=now + 1000)
    assert store.acquire(queue_name, "a", "m4", now=now + LEASE_MS + 1) == ("", 0)
    assert store.acquire(queue_name, "a", "m5", now=now + LEASE_MS + 1) == ("c", 0)


def test_limiter_does_nothing_on_the_redis_broker(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker(capped("a", max_concurrency=1))
    limiter = TenantLimiter(settings=broker.settings)
    message = Message(queue_name=queue_name, actor_name="x", args=(), kwargs={}, options={"tenant": "a"})
    assert [limiter.hold(broker, message) for _ in range(3)] == [None, None, None]


OVERLAP = """
local now = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], now)
return now
"""


@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"])
def test_capped_tenant_never_exceeds_its_cap_and_uses_no_retry(
    settings: Settings, namespace: str, queue_name: str, state_client: redis.Redis
) -> None:
    limited = settings.model_copy(update={"limits": capped("a", max_concurrency=2)})
    broker = setup(limited)
    broker.add_middleware(TenantLimiter(settings=limited))
    running, samples = f"{namespace}:test:running:{{a}}", f"{namespace}:test:samples:{{a}}"
    enter = state_client.register_script(OVERLAP)
    done: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def job(tenant: str, index: int) -> None:
        if tenant == "a":
            enter(keys=[running, samples])
        time.sleep(0.02)
        if tenant == "a":
            state_client.decr(running)
        done.append(tenant)

    try:
        for index in range(20):
            job.send_with_options(args=("a", index), tenant="a")
            job.send_with_options(args=("b", index), tenant="b")
        worker = Worker(broker, worker_threads=8, worker_timeout=50)
        worker.start()
        try:
            wait_for(lambda: len(done) == 40, timeout=60)
        finally:
            worker.stop(timeout=10_000)
        overlaps = [int(value) for value in state_client.lrange(samples, 0, -1)]
        assert len(overlaps) == 20
        assert max(overlaps) <= 2
        assert sorted(done) == ["a"] * 20 + ["b"] * 20
    finally:
        broker.flush_all()
        broker.close()


def test_queue_rows_gain_cap_and_rate(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker(LimitSettings(tenants={"a": TenantLimit(max_concurrency=2)}, default=TenantLimit(rate=3)))
    push(broker, queue_name, Priority.NORMAL, "a", 1)
    push(broker, queue_name, Priority.LOW, "b", 1)
    fetch(broker, queue_name, 0)
    rows = broker.tenant_limits.annotate(broker.queue_depths(queue_name))
    assert {row["tenant"]: (row["in_flight_cap"], row["rate"]) for row in rows} == {"a": (2, 3.0), "b": (None, 3.0)}


def test_metrics_helpers_report_throttles_and_in_flight(make_broker: BrokerFactory, queue_name: str) -> None:
    broker = make_broker(capped("a", max_concurrency=1))
    push(broker, queue_name, Priority.NORMAL, "a", 3)
    fetch(broker, queue_name, 3)
    assert drain_throttled(broker) == {(queue_name, "a", "concurrency"): 1}
    assert drain_throttled(broker) == {}
    assert tenant_in_flight(broker, queue_name) == {"a": 1}


def test_limiter_holds_over_the_cap_releases_and_exempts_critical(
    state_client: redis.Redis, namespace: str, queue_name: str, short_tmp: Path
) -> None:
    settings = Settings(namespace=namespace, data_dir=short_tmp, limits=capped("a", max_concurrency=1))
    limiter = TenantLimiter(settings=settings, store=TenantLimits(state_client, namespace, "rabbitmq"))
    broker = StubBroker()

    def message(**options: Any) -> MessageProxy:
        return MessageProxy(Message(queue_name=queue_name, actor_name="x", args=(), kwargs={}, options=options))

    first, second = message(tenant="a"), message(tenant="a")
    assert limiter.hold(broker, first) is None
    delay = limiter.hold(broker, second)
    assert delay is not None
    assert CAP_RECHECK_MS <= delay < CAP_RECHECK_MS * 3 // 2
    assert limiter.hold(broker, message(tenant="a", priority_level=int(Priority.CRITICAL))) is None
    assert limiter.hold(broker, message(tenant="b")) is None
    assert limiter.drain_throttled() == {(queue_name, "a", "concurrency"): 1}
    limiter.after_nack(broker, first)
    assert limiter.hold(broker, second) is None
    limiter.before_process_message(broker, second)
    limiter.after_process_message(broker, second)
    assert limiter.store.in_flight(queue_name) == {}
    broker.close()
