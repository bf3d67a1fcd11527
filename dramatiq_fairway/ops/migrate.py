"""``fairway migrate``: adopt the queues stock Dramatiq (or an older fairway layout) left behind.

What it moves on each broker, and why it is safe to run while producers still send, is in
docs/operations.md ("Adopting stock queues"); the Redis half is :mod:`.migrate_redis`, the
RabbitMQ half :mod:`.migrate_rabbitmq`. Both report one ``Migrated`` row per queue, with
the messages moved (or, with ``dry_run``, that would move): a second run reports zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

from dramatiq import Broker

from ..brokers.fair_redis import FairRedisBroker
from ..brokers.rabbitmq import FairRabbitmqBroker
from ..errors import FairwayError
from .migrate_rabbitmq import migrate_rabbitmq
from .migrate_redis import DEFAULT_STOCK_NAMESPACE, migrate_redis
from .migration_report import Migrated

__all__ = ["DEFAULT_STOCK_NAMESPACE", "Migrated", "MigrationUnsupported", "migrate"]


class MigrationUnsupported(FairwayError):
    """The configured broker is neither fairway's Redis nor its RabbitMQ broker."""


def migrate(
    broker: Broker,
    queue_names: Sequence[str] = (),
    *,
    dry_run: bool = False,
    stock_namespace: str = DEFAULT_STOCK_NAMESPACE,
) -> list[Migrated]:
    """Move the stock messages of ``queue_names`` (every queue found when empty) into fairway's layout."""
    if isinstance(broker, FairRedisBroker):
        return migrate_redis(broker, queue_names, dry_run=dry_run, stock_namespace=stock_namespace)
    if isinstance(broker, FairRabbitmqBroker):
        return migrate_rabbitmq(broker, queue_names, dry_run=dry_run)
    raise MigrationUnsupported(f"broker: {type(broker).__name__} is not one fairway migrates to")
