"""Tenant queues on RabbitMQ (brokers/rabbitmq_tenants.py): no tenant waits behind another's flood.

The routing script runs on the shared Redis; the broker tests on the real RabbitMQ with an
in-process Worker. Positions in the processing order are printed (``-s`` shows them).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import dramatiq
import pika
import pytest
import redis
from dramatiq import Broker, Worker
from redis.backoff import NoBackoff
from redis.retry import Retry

from dramatiq_fairway.brokers.rabbitmq import FairwayRabbitmqBroker
from dramatiq_fairway.brokers.rabbitmq_layout import QueueLayout
from dramatiq_fairway.brokers.rabbitmq_tenants import TenantRoutes, lane_of, level_queue, tenant_queue
from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.scripts import LuaScript
from dramatiq_fairway.store.tenant_counts import LANE, OWN, Slot, TenantCounts

from ..support.helpers import wait_for
from ..support.tenant_flood import (
    RunOrder,
    assert_small_tenants_ran_first,
    flood_then_small_tenants,
    ordered_tenant_job,
)
from .test_rabbitmq_fair import declare, delete_level_queues

N = Priority.NORMAL
FLOOD = 3000


@pytest.fixture
def counts(state_client: redis.Redis, namespace: str) -> TenantCounts:
    return TenantCounts(state_client, namespace)


# The routing script.


def test_a_tenant_goes_to_its_own_queue_at_the_threshold_and_back_once_it_is_empty(counts: TenantCounts) -> None:
    routes = [counts.route("q", N, "a", isolate_at=3) for _ in range(5)]
    assert routes == [False, False, False, True, True]
    assert counts.snapshot("q") == {Slot(LANE, N, "a"): 3, Slot(OWN, N, "a"): 2}
    # Lane messages settled: the tenant stays on its own queue while that holds any (FIFO).
    counts.settle("q", {Slot(LANE, N, "a"): 3})
    assert counts.route("q", N, "a", isolate_at=3) is True
    counts.settle("q", {Slot(OWN, N, "a"): 3})
    assert counts.snapshot("q") == {}
    assert counts.route("q", N, "a", isolate_at=3) is False


def test_counts_are_per_level_and_tenant_and_never_negative(counts: TenantCounts) -> None:
    for _ in range(2):
        counts.route("q", N, "a", isolate_at=2)
    assert counts.route("q", Priority.HIGH, "a", isolate_at=2) is False
    assert counts.route("q", N, "b", isolate_at=2) is False
    counts.settle("q", {Slot(LANE, N, "b"): 5, Slot(OWN, N, "zed"): 1})
    assert counts.snapshot("q") == {Slot(LANE, N, "a"): 2, Slot(LANE, Priority.HIGH, "a"): 1}


def test_heal_drops_a_count_only_while_it_holds_the_value_seen(counts: TenantCounts) -> None:
    for _ in range(4):
        counts.route("q", N, "a", isolate_at=50)
    assert counts.heal("q", [(Slot(LANE, N, "a"), 3)]) == 0
    assert counts.heal("q", [(Slot(LANE, N, "a"), 4)]) == 1
    assert counts.snapshot("q") == {}


def test_a_tenant_name_with_the_separator_round_trips(counts: TenantCounts) -> None:
    counts.route("q", N, "a|b|c", isolate_at=1)
    assert counts.snapshot("q") == {Slot(LANE, N, "a|b|c"): 1}


def test_a_script_called_outside_a_pipeline_is_loaded_when_the_server_lacks_it(state_client: redis.Redis) -> None:
    # A text no server has seen (SCRIPT FLUSH would hit the other suites on the shared Redis).
    script = LuaScript.from_text(f"return '{uuid.uuid4().hex}' .. ARGV[1]")
    assert not state_client.script_exists(script.sha)[0]
    assert script.call(state_client, [], ["!"]).decode().endswith("!")
    assert state_client.script_exists(script.sha)[0]


# The broker.


@pytest.fixture
def rabbit(broker: Broker, settings: Settings) -> Iterator[FairwayRabbitmqBroker]:
    assert isinstance(broker, FairwayRabbitmqBroker)
    yield broker
    delete_level_queues(broker, settings)


def counts_settle_to_zero(rabbit: FairwayRabbitmqBroker, queue_name: str) -> None:
    counts = rabbit.tenant_counts
    assert counts is not None
    wait_for(lambda: counts.snapshot(queue_name) == {}, timeout=10)


@pytest.fixture
def ordered_job(rabbit: FairwayRabbitmqBroker, queue_name: str) -> tuple[dramatiq.Actor[..., None], RunOrder]:
    return ordered_tenant_job(rabbit, queue_name)


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
@pytest.mark.parametrize("small_tenants", [3, 30, 100])
def test_small_tenants_run_within_the_first_fifth_behind_a_flood(
    rabbit: FairwayRabbitmqBroker,
    queue_name: str,
    ordered_job: tuple[dramatiq.Actor[..., None], RunOrder],
    start_worker: Callable[..., Worker],
    small_tenants: int,
) -> None:
    job, order = ordered_job
    small = flood_then_small_tenants(job, flood=FLOOD, small_tenants=small_tenants)
    # One thread: the order jobs start in is the order they were handed out (FIFO is checked exactly).
    start_worker(threads=1)
    assert_small_tenants_ran_first(order, small, flood=FLOOD, label="single node")
    counts_settle_to_zero(rabbit, queue_name)


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_fifo_per_level_and_tenant_across_the_switch_to_its_own_queue_and_back(
    rabbit: FairwayRabbitmqBroker,
    queue_name: str,
    ordered_job: tuple[dramatiq.Actor[..., None], RunOrder],
    start_worker: Callable[..., Worker],
) -> None:
    job, order = ordered_job
    counts = rabbit.tenant_counts
    assert counts is not None
    isolate_at = rabbit.settings.fairness.rabbitmq_isolate_at
    for n in range(isolate_at + 30):
        job.send_with_options(args=(n,), tenant="acme")
    assert counts.snapshot(queue_name) == {Slot(LANE, N, "acme"): isolate_at, Slot(OWN, N, "acme"): 30}
    start_worker(threads=1)
    # Sent while the first ones run: behind them on the own queue, then on the lane once it emptied.
    for n in range(isolate_at + 30, isolate_at + 60):
        job.send_with_options(args=(n,), tenant="acme")
    wait_for(lambda: len(order) >= isolate_at + 60, timeout=60)
    counts_settle_to_zero(rabbit, queue_name)
    for n in range(isolate_at + 60, isolate_at + 70):
        job.send_with_options(args=(n,), tenant="acme")
    wait_for(lambda: len(order) >= isolate_at + 70, timeout=60)
    assert [n for _tenant, n in order] == list(range(isolate_at + 70))
    assert tenant_queue(queue_name, N, "acme") in rabbit.tenant_routes.declared
    counts_settle_to_zero(rabbit, queue_name)


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_a_tenant_queue_deleted_under_the_producer_is_declared_again_and_gets_the_message(
    rabbit: FairwayRabbitmqBroker, settings: Settings, queue_name: str
) -> None:
    job = declare(rabbit, queue_name)
    isolate_at = rabbit.settings.fairness.rabbitmq_isolate_at
    for n in range(isolate_at + 1):
        job.send_with_options(args=(n,), tenant="acme")
    own = tenant_queue(queue_name, N, "acme")
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    connection.channel().queue_delete(own)
    connection.close()
    # The producer still thinks it declared the queue: confirms report the publish unroutable.
    job.send_with_options(args=(isolate_at + 1,), tenant="acme")
    assert rabbit.passive_count(own) == 1


def test_without_the_state_store_messages_go_to_their_lanes_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = TenantCounts(redis.Redis(port=17401, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)), "ns")
    routes = TenantRoutes(lambda: down, lanes=4, isolate_at=1, layout=QueueLayout())
    message = dramatiq.Message("q", "job", (), {}, {"tenant": "acme", "priority_level": 3})
    with caplog.at_level(logging.WARNING):
        targets = {routes.destination(message) for _ in range(3)}
    assert targets == {level_queue("q", N, lane_of("acme", 4))}
    assert len([r for r in caplog.records if "State store unavailable" in r.getMessage()]) == 1


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_counts_left_by_a_lost_decrement_heal_and_never_wedge_a_tenant(
    rabbit: FairwayRabbitmqBroker,
    queue_name: str,
    ordered_job: tuple[dramatiq.Actor[..., None], RunOrder],
    start_worker: Callable[..., Worker],
) -> None:
    job, order = ordered_job
    counts = rabbit.tenant_counts
    assert counts is not None
    rabbit.declare_queue(queue_name, ensure=True)
    isolate_at = rabbit.settings.fairness.rabbitmq_isolate_at
    # What a worker killed between its acks and their decrements leaves: lane counts of nothing.
    for _ in range(isolate_at):
        counts.route(queue_name, N, "acme", isolate_at)
    for n in range(3):
        job.send_with_options(args=(n,), tenant="acme")
    assert counts.snapshot(queue_name) == {Slot(LANE, N, "acme"): isolate_at, Slot(OWN, N, "acme"): 3}
    start_worker(threads=1)
    # Gated behind lane messages that do not exist, until the count is seen stale and dropped.
    wait_for(lambda: len(order) == 3, timeout=30)
    assert [n for _tenant, n in order] == [0, 1, 2]
    counts_settle_to_zero(rabbit, queue_name)
