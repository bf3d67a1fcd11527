"""QueueLayout: the declaration arguments of every AMQP queue role, classic and quorum (no server)."""

from __future__ import annotations

import pytest
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker
from dramatiq.common import xq_name

from dramatiq_fairway.brokers.rabbitmq_layout import QUORUM_DELIVERY_LIMIT, QueueLayout, QueueRole
from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.settings import Settings

EXTRA = {QueueRole.PARK: {"ready_queue": "q.fair.3.0", "ttl_ms": 60_000}, QueueRole.TENANT: {"expires_ms": 600_000}}


def test_classic_arguments_are_those_stock_dramatiq_and_earlier_fairway_declared() -> None:
    # Changing any of them would make RabbitMQ refuse existing queues (406).
    stock = RabbitmqBroker(url="amqp://127.0.0.1:1/%2F", max_priority=5)
    layout = QueueLayout("classic", max_priority=5)
    assert layout.arguments(QueueRole.CANONICAL, "q") == stock._build_queue_arguments("q")
    assert layout.arguments(QueueRole.DELAY, "q") == stock._build_queue_arguments("q")
    assert layout.arguments(QueueRole.DEAD, "q") == {"x-message-ttl": DEAD_MESSAGE_TTL}
    assert layout.arguments(QueueRole.LEVEL, "q") == {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "q.XQ"}


@pytest.mark.parametrize("role", list(QueueRole))
def test_every_quorum_role_is_a_quorum_queue_with_the_delivery_limit_and_no_priority(role: QueueRole) -> None:
    arguments = QueueLayout("quorum", max_priority=5).arguments(role, "q", **EXTRA.get(role, {}))  # type: ignore[arg-type]
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-delivery-limit"] == QUORUM_DELIVERY_LIMIT
    assert "x-max-priority" not in arguments
    if "x-dead-letter-exchange" in arguments:
        assert arguments["x-dead-letter-strategy"] == "at-least-once"
        assert arguments["x-overflow"] == "reject-publish"


def test_park_queues_dead_letter_to_their_ready_queue_after_their_ttl() -> None:
    arguments = QueueLayout("quorum").arguments(QueueRole.PARK, "q", ready_queue="q.fair.3.0", ttl_ms=60_000)
    assert arguments["x-dead-letter-routing-key"] == "q.fair.3.0"
    assert arguments["x-message-ttl"] == 60_000


def test_tenant_queues_expire_when_idle_and_dead_letter_to_the_dead_queue() -> None:
    arguments = QueueLayout("classic").arguments(QueueRole.TENANT, "q", expires_ms=600_000)
    assert arguments == {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": xq_name("q"), "x-expires": 600_000}


@pytest.mark.parametrize(
    ("role", "missing"), [(QueueRole.PARK, "ready_queue and ttl_ms"), (QueueRole.TENANT, "expires_ms")]
)
def test_a_role_missing_its_parameters_is_refused_naming_them(role: QueueRole, missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        QueueLayout().arguments(role, "q")


def test_several_urls_give_one_connection_parameter_set_per_node_in_order() -> None:
    settings = Settings(rabbitmq_url="amqp://u:p@r1:5672/%2F, amqp://u:p@r2:5673/%2F")
    nodes = rabbitmq_parameters(settings, connection_attempts=1)
    assert [(node.host, node.port, node.connection_attempts) for node in nodes] == [("r1", 5672, 1), ("r2", 5673, 1)]
