"""The broker factory on real servers: jobs run end to end on every broker kind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Broker, Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from dramatiq_fairway import setup
from dramatiq_fairway.embedded import EmbeddedRedis
from dramatiq_fairway.settings import Settings

from ..support.helpers import run_jobs, wait_for


def test_jobs_run_on_the_configured_broker(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    expected = RabbitmqBroker if settings.broker == "rabbitmq" else RedisBroker
    assert isinstance(broker, expected)
    assert dramatiq.get_broker() is broker
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def square(x: int) -> None:
        done.append(x * x)

    for x in range(20):
        square.send(x)
    start_worker()
    broker.join(queue_name, timeout=15_000)
    assert sorted(done) == sorted(x * x for x in range(20))


def test_async_actors_run(broker: Broker, queue_name: str, start_worker: Callable[..., Worker]) -> None:
    assert any(isinstance(m, AsyncIO) for m in broker.middleware)
    done: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    async def greet(name: str) -> None:
        done.append(f"hello {name}")

    greet.send("async")
    start_worker()
    wait_for(lambda: done)
    assert done == ["hello async"]


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_rabbitmq_broker_declares_priorities_and_confirms(broker: Broker, settings: Settings) -> None:
    assert isinstance(broker, RabbitmqBroker)
    # Quorum queues refuse x-max-priority (FAIRWAY_RABBITMQ__QUEUE_TYPE=quorum runs this suite too).
    assert broker.max_priority == (5 if settings.rabbitmq.queue_type == "classic" else None)
    assert broker.confirm_delivery is True


def test_embedded_broker_is_shared_and_survives(short_tmp: Path, queue_name: str) -> None:
    settings = Settings(broker="embedded", data_dir=short_tmp)
    server = EmbeddedRedis(short_tmp)
    try:
        broker = setup(settings)
        assert server.status().running
        assert server.status().version == "6.2.14"
        assert sorted(run_jobs(broker, queue_name, [1, 2])) == [1, 2]

        # A second setup joins the running server instead of starting another.
        assert server.ensure_running() is False
        broker.client.set("survives", "yes")
        broker.close()
        assert server.stop() is True
        assert not server.status().running
        assert server.ensure_running() is True
        assert server.status().running
        reopened = setup(settings)
        assert reopened.client.get("survives") == b"yes"
        reopened.close()
    finally:
        server.stop()


def test_rabbitmq_broker_keeps_its_old_name_as_an_alias() -> None:
    from dramatiq_fairway import brokers
    from dramatiq_fairway.brokers import rabbitmq

    assert rabbitmq.FairwayRabbitmqBroker is rabbitmq.FairRabbitmqBroker
    assert brokers.FairwayRabbitmqBroker is brokers.FairRabbitmqBroker is rabbitmq.FairRabbitmqBroker
