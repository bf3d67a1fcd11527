"""``enqueue_many`` on both brokers: a good batch, bad messages in the middle, capacity, PENDING statuses."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
import pika
import pytest
import redis
from dramatiq import Broker, Message, Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import q_name
from dramatiq.errors import ActorNotFound

from dramatiq_fairway import MessagesRefused, bulk, enqueue_many, group
from dramatiq_fairway.brokers import bulk as brokers_bulk
from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.brokers.rabbitmq import FairRabbitmqBroker
from dramatiq_fairway.brokers.rabbitmq_tenants import tenant_queue
from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.errors import MessageTooLarge, QueueFull
from dramatiq_fairway.middlewares.fairness import FairPriority, InvalidOption
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import FairnessSettings, Settings
from dramatiq_fairway.store.keys import fairness_queued_key
from dramatiq_fairway.store.scripts import LuaScript, ScriptCall
from dramatiq_fairway.store.status import JobState, JobStatusStore
from dramatiq_fairway.store.tenant_counts import LANE, OWN, Slot, TenantCounts

from ..support.helpers import wait_for


@pytest.fixture
def store(settings: Settings, state_client: redis.Redis) -> JobStatusStore:
    return JobStatusStore.from_settings(settings, client=state_client)


def _state(store: JobStatusStore, message_id: str) -> JobState | None:
    record = store.get(message_id)
    return record.state if record else None


def test_a_good_batch_is_enqueued_in_order_pending_and_runs(
    broker: Broker, queue_name: str, store: JobStatusStore, start_worker: Callable[..., Worker]
) -> None:
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(n: int) -> None:
        ran.append(n)

    messages = [job.message_with_options(args=(n,), tenant=f"t{n % 3}") for n in range(250)]
    enqueued = enqueue_many(messages, broker=broker)

    assert [m.message_id for m in enqueued] == [m.message_id for m in messages]
    assert {m.queue_name for m in enqueued} == {queue_name}
    assert {_state(store, m.message_id) for m in enqueued} == {JobState.PENDING}
    start_worker()
    wait_for(lambda: len(ran) == 250, timeout=30)
    assert sorted(ran) == list(range(250))


def test_bad_messages_in_the_middle_are_reported_one_line_each_and_the_good_ones_run(
    broker: Broker,
    settings: Settings,
    queue_name: str,
    store: JobStatusStore,
    start_worker: Callable[..., Worker],
) -> None:
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(name: str) -> None:
        ran.append(name)

    too_large = job.message("x" * (settings.max_message_bytes + 1))
    bad_priority = job.message_with_options(args=("bad priority",), priority_level="urgent")
    unknown = Message(queue_name=queue_name, actor_name="no_such_actor", args=(), kwargs={}, options={})
    batch = [job.message("first"), too_large, bad_priority, job.message("middle"), unknown, job.message("last")]

    with pytest.raises(MessagesRefused) as refused:
        enqueue_many(batch, broker=broker)

    lines = str(refused.value).splitlines()
    assert lines[0] == "3 of 6 messages refused, the others enqueued:"
    assert [line.split(" (")[0] for line in lines[1:]] == ["message 1", "message 2", "message 4"]
    errors = [error for _, _, error in refused.value.refused]
    assert isinstance(errors[0], MessageTooLarge)
    assert isinstance(errors[1], InvalidOption)
    assert isinstance(errors[2], ActorNotFound)
    assert [m.args[0] for m in refused.value.enqueued] == ["first", "middle", "last"]
    # Nothing half-written: a status only for the messages that were enqueued.
    assert [_state(store, m.message_id) for m in batch] == [
        JobState.PENDING,
        None,
        None,
        JobState.PENDING,
        None,
        JobState.PENDING,
    ]
    start_worker()
    wait_for(lambda: len(ran) == 3, timeout=20)
    assert sorted(ran) == ["first", "last", "middle"]


def test_capacity_is_counted_per_message_and_given_back_by_the_refused(
    broker: Broker, settings: Settings, queue_name: str, state_client: redis.Redis
) -> None:
    capped = settings.model_copy(update={"fairness": FairnessSettings(max_queued_per_tenant=3)})
    broker.middleware = [m for m in broker.middleware if not isinstance(m, FairPriority)]
    broker.add_middleware(FairPriority(settings=capped), after=broker.middleware[0].__class__)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(name: str) -> None: ...

    batch = [
        job.message_with_options(args=("a1",), tenant="a"),
        job.message_with_options(args=("x" * (settings.max_message_bytes + 1),), tenant="a"),
        job.message_with_options(args=("a2",), tenant="a"),
        job.message_with_options(args=("a3",), tenant="a"),
        job.message_with_options(args=("a4",), tenant="a"),
        job.message_with_options(args=("a-critical",), tenant="a", priority_level="critical"),
    ]
    with pytest.raises(MessagesRefused) as refused:
        enqueue_many(batch, broker=broker)

    errors = {index: error for index, _, error in refused.value.refused}
    assert sorted(errors) == [1, 4]
    assert isinstance(errors[1], MessageTooLarge)
    assert isinstance(errors[4], QueueFull)
    # The oversized message was admitted, then refused: its place was given back.
    queued = state_client.zrange(fairness_queued_key(settings.namespace, q_name(queue_name), "a"), 0, -1)
    assert sorted(member.decode() for member in queued) == sorted(batch[i].message_id for i in (0, 2, 3))


def test_on_a_stock_broker_it_enqueues_one_by_one_with_the_same_outcomes() -> None:
    broker = StubBroker()
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker, queue_name="stock")
    def job(n: int) -> None: ...

    unknown = Message(queue_name="stock", actor_name="no_such_actor", args=(), kwargs={}, options={})
    with pytest.raises(MessagesRefused, match=r"message 1 \(.*no_such_actor.*ActorNotFound"):
        enqueue_many([job.message(1), unknown, job.message(2)], broker=broker)
    assert broker.queues["stock"].qsize() == 2


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_a_publish_returned_as_unroutable_is_declared_again_and_resent(
    broker: Broker, settings: Settings, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(broker, FairRabbitmqBroker)
    broker.tenant_routes.isolate_at = 3

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(n: int) -> None: ...

    enqueue_many([job.message_with_options(args=(n,), tenant="acme") for n in range(4)], broker=broker)
    own = tenant_queue(queue_name, Priority.NORMAL, "acme")
    assert broker.passive_count(own) == 1
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    connection.channel().queue_delete(own)
    connection.close()
    forgotten: list[str] = []
    forget = broker.tenant_routes.forget
    monkeypatch.setattr(broker.tenant_routes, "forget", lambda name: (forgotten.append(name), forget(name)))
    # The producer still thinks the queue is declared: the publish comes back unroutable.
    [sent] = enqueue_many([job.message_with_options(args=(4,), tenant="acme")], broker=broker)
    assert broker.passive_count(own) == 1
    assert sent.args == (4,)
    assert forgotten == [own]


def test_routing_a_batch_counts_as_routing_each_message_in_turn(state_client: redis.Redis, namespace: str) -> None:
    counts = TenantCounts(state_client, namespace)
    slots = [(Priority.NORMAL, "a")] * 5 + [(Priority.HIGH, "a"), (Priority.NORMAL, "b")]
    assert counts.route_many("q", slots, isolate_at=3) == [False, False, False, True, True, False, False]
    assert counts.snapshot("q") == {
        Slot(LANE, Priority.NORMAL, "a"): 3,
        Slot(OWN, Priority.NORMAL, "a"): 2,
        Slot(LANE, Priority.HIGH, "a"): 1,
        Slot(LANE, Priority.NORMAL, "b"): 1,
    }


def test_a_fairway_group_runs_its_messages_as_one_batch(
    broker: Broker,
    queue_name: str,
    store: JobStatusStore,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(n: int) -> None:
        ran.append(n)

    batches: list[int] = []
    enqueue_batch = bulk.enqueue_batch
    monkeypatch.setattr(bulk, "enqueue_batch", lambda b, m: (batches.append(len(m)), enqueue_batch(b, m))[1])
    monkeypatch.setattr(broker, "enqueue", lambda *_, **__: pytest.fail("enqueued one by one"))
    jobs = group(job.message_with_options(args=(n,), tenant=f"t{n % 2}") for n in range(20))
    assert jobs.run() is jobs
    monkeypatch.undo()

    assert batches == [20]
    assert {_state(store, m.message_id) for m in jobs.children} == {JobState.PENDING}
    start_worker()
    wait_for(lambda: len(ran) == 20, timeout=30)
    assert sorted(ran) == list(range(20))


def test_a_group_with_a_delay_runs_as_dramatiqs(
    broker: Broker, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(n: int) -> None: ...

    monkeypatch.setattr(bulk, "enqueue_batch", lambda *_: pytest.fail("sent as a batch"))
    enqueued: list[int | None] = []
    enqueue = broker.enqueue
    monkeypatch.setattr(broker, "enqueue", lambda m, delay=None: (enqueued.append(delay), enqueue(m, delay=delay))[1])
    group([job.message(1), job.message(2)]).run(delay=60_000)
    assert enqueued == [60_000, 60_000]


@pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)
def test_a_failed_script_call_refuses_its_messages_only_with_nothing_half_written(
    broker: Broker,
    settings: Settings,
    queue_name: str,
    store: JobStatusStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert isinstance(broker, FairRedisBroker)
    capped = settings.model_copy(update={"fairness": FairnessSettings(max_queued_per_tenant=10)})
    broker.middleware = [m for m in broker.middleware if not isinstance(m, FairPriority)]
    broker.add_middleware(FairPriority(settings=capped), after=broker.middleware[0].__class__)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(name: str) -> None: ...

    monkeypatch.setattr(brokers_bulk, "ENQUEUES_PER_CALL", 2)
    enqueue_call = broker.enqueue_call

    def failing_for_b(message: Message, body: bytes, *more: tuple[Message, bytes]) -> ScriptCall:
        call = enqueue_call(message, body, *more)
        if any(m.args == ("b",) for m in [message, *[m for m, _ in more]]):
            return ScriptCall(LuaScript.from_text("return redis.error_reply('refused')"), call.keys, call.args)
        return call

    monkeypatch.setattr(broker, "enqueue_call", failing_for_b)
    batch = [job.message_with_options(args=(name,), tenant="a") for name in ["a", "b", "c", "d", "e"]]
    with pytest.raises(MessagesRefused) as refused:
        enqueue_many(batch, broker=broker)

    # The first of the three calls held "a" and "b": only its messages failed.
    assert sorted(index for index, _, _ in refused.value.refused) == [0, 1]
    assert [m.args[0] for m in refused.value.enqueued] == ["c", "d", "e"]
    assert [_state(store, m.message_id) for m in batch] == [None, None] + [JobState.PENDING] * 3
    assert broker.join_size(queue_name) == 3
    queued = store.client.zrange(fairness_queued_key(settings.namespace, q_name(queue_name), "a"), 0, -1)
    assert sorted(member.decode() for member in queued) == sorted(m.message_id for m in batch[2:])
