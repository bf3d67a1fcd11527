"""Broker factory: the broker named by ``FAIRWAY_BROKER``, built with fairway's connection settings."""

from __future__ import annotations

from dramatiq import Broker

from ..connections import broker_redis_url, rabbitmq_parameters, redis_client
from ..settings import Settings
from .fair_redis import FairRedisBroker
from .rabbitmq import FairRabbitmqBroker
from .rabbitmq import FairwayRabbitmqBroker as FairwayRabbitmqBroker  # the name before #19

# AMQP priorities for fairway's five levels (CRITICAL=1 is the most urgent, AMQP wants the
# highest number there). Declared on every queue from the start: RabbitMQ refuses to redeclare a
# queue with other arguments, so adding it later would need a migration.
RABBITMQ_MAX_PRIORITY = 5


def build_broker(settings: Settings) -> Broker:
    """A new broker for ``settings``, with Dramatiq's default middleware and nothing of fairway's.

    Redis (and the embedded Redis) get ``FairRedisBroker``, whose dispatch script does the fair
    scheduling; its keys live under ``FAIRWAY_NAMESPACE`` so one setting isolates a deployment.
    """
    if settings.broker == "rabbitmq":
        # Quorum queues refuse x-max-priority; fairway's levels are queues, so nothing needs it.
        classic = settings.rabbitmq.queue_type == "classic"
        broker = FairRabbitmqBroker(
            url=settings.rabbitmq_url.split(","),
            confirm_delivery=True,
            max_priority=RABBITMQ_MAX_PRIORITY if classic else None,
            settings=settings,
        )
        broker.parameters = rabbitmq_parameters(settings)
        return broker
    client = redis_client(broker_redis_url(settings), settings.tls)
    return FairRedisBroker(client=client, namespace=settings.namespace, settings=settings)
