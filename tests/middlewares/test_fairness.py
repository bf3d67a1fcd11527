"""FairPriority on real Redis and RabbitMQ: validation, tenant_from, AMQP priorities, capacity."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
import pytest
from dramatiq import Broker, Message, Middleware, Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from dramatiq_fairway.errors import QueueFull
from dramatiq_fairway.middlewares.fairness import FairPriority
from dramatiq_fairway.settings import FairnessSettings, Settings

from ..support.helpers import wait_for


class Sent(Middleware):
    def __init__(self) -> None:
        self.options: list[dict[str, object]] = []

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        self.options.append(dict(message.options))


@pytest.fixture
def sent(broker: Broker) -> Sent:
    recorder = Sent()
    broker.add_middleware(recorder)
    return recorder


@pytest.mark.parametrize("level", ["urgent", 0, 6, True, 2.0])
def test_bad_priority_level_names_the_allowed_values(broker: Broker, queue_name: str, level: object) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job() -> None: ...

    with pytest.raises(ValueError, match=r"priority_level: .* is not one of CRITICAL \(1\), HIGH \(2\)"):
        job.send_with_options(priority_level=level)


@pytest.mark.parametrize("tenant", ["", "x" * 129, "a\nb", 7, None])
def test_bad_tenant_is_refused(broker: Broker, queue_name: str, tenant: object) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job() -> None: ...

    with pytest.raises(ValueError, match="non-empty printable string of at most 128 characters"):
        job.send_with_options(tenant=tenant)


def test_levels_and_tenants_are_normalised(broker: Broker, queue_name: str, sent: Sent) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, priority_level="low", tenant="acme")
    def job() -> None: ...

    job.send()
    job.send_with_options(priority_level="Critical", tenant="zed")
    assert [(o["priority_level"], o["tenant"]) for o in sent.options] == [(4, "acme"), (1, "zed")]
    if isinstance(broker, RabbitmqBroker) and broker.max_priority:
        # AMQP: higher is more urgent; the queues are declared with x-max-priority=5.
        assert [o["broker_priority"] for o in sent.options] == [2, 5]
    elif isinstance(broker, RabbitmqBroker):
        # Quorum queues have no x-max-priority: the levels are queues, no AMQP priority is set.
        assert [o.get("broker_priority") for o in sent.options] == [None, None]
    else:
        levels = {row["priority_level"]: row["tenant"] for row in broker.queue_depths(queue_name)}
        assert levels == {"LOW": "acme", "CRITICAL": "zed"}


def test_tenant_from_reads_the_parameter_by_position_or_keyword(broker: Broker, queue_name: str, sent: Sent) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, tenant_from="user_id")
    def fetch(paper_id: str, user_id: int | str, depth: int = 1) -> None: ...

    fetch.send("p1", 7)
    fetch.send("p2", user_id="u8")
    fetch.send_with_options(args=("p3", "u9"), tenant="explicit")
    assert [o["tenant"] for o in sent.options] == ["7", "u8", "explicit"]


def test_tenant_from_must_name_a_parameter(broker: Broker, queue_name: str) -> None:
    with pytest.raises(ValueError, match="has no parameter 'user'"):

        @dramatiq.actor(broker=broker, queue_name=queue_name, tenant_from="user")
        def job(user_id: str) -> None: ...


def test_capacity_per_tenant_with_critical_exempt(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    capped = settings.model_copy(update={"fairness": FairnessSettings(max_queued_per_tenant=2)})
    broker.middleware = [m for m in broker.middleware if not isinstance(m, FairPriority)]
    broker.add_middleware(FairPriority(settings=capped))
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def job(name: str) -> None:
        ran.append(name)

    job.send_with_options(args=("a1",), tenant="a")
    job.send_with_options(args=("a2",), tenant="a", delay=50)
    with pytest.raises(QueueFull, match="tenant 'a' has 2 messages queued"):
        job.send_with_options(args=("a3",), tenant="a")
    job.send_with_options(args=("b1",), tenant="b")
    job.send_with_options(args=("a-critical",), tenant="a", priority_level="critical")
    start_worker()
    wait_for(lambda: len(ran) == 4, timeout=15)
    job.send_with_options(args=("a4",), tenant="a")
    wait_for(lambda: "a4" in ran, timeout=15)
    assert sorted(ran) == ["a-critical", "a1", "a2", "a4", "b1"]
