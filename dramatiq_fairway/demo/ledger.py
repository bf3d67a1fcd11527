"""The ledger ``fairway demo`` reads its summary from, written by its workers (:mod:`.app`).

One JSON entry per finished job (tenant, level, how long it waited, the failures it was retried
for) and one per breaker transition, in the state store under the demo run's own namespace:

    {namespace}:demo:finished   list of FinishedJob JSON, one per job that succeeded
    {namespace}:demo:breakers   list of BreakerTransition JSON, in the order the workers saw them

Both expire ``LEDGER_TTL`` seconds after their last write; the demo deletes its namespace anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import redis
from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy
from pydantic import BaseModel

from ..connections import state_store_client
from ..priority import level_of
from ..settings import Settings, load_settings
from ..store.keys import demo_breakers_key, demo_finished_key
from ..tenants import tenant_of

LEDGER_TTL = 3600


class FinishedJob(BaseModel):
    actor: str
    queue: str
    tenant: str
    priority_level: str
    wait_s: float
    retried_for: list[str]


class BreakerTransition(BaseModel):
    key: str
    from_state: str
    to_state: str
    at: datetime


def ready_at(options: dict[str, Any], enqueued_ms: int) -> float:
    """When the job could first run this time: enqueue, else its last failed run, else its eta (s)."""
    return max(enqueued_ms, int(options.get("requeue_timestamp", 0)), int(options.get("eta", 0))) / 1000


def _append(client: redis.Redis, key: str, entry: BaseModel) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.rpush(key, entry.model_dump_json())
        pipe.expire(key, LEDGER_TTL)
        pipe.execute()


class DemoLedger(Middleware):
    """Writes a :class:`FinishedJob` for every job that succeeded.

    Failures are not written here: retries are read from the succeeding run's ``attempt_history``
    (written by ClassifiedRetries) and final failures from the dead-letter store.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.client = state_store_client(self.settings)
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:  # noqa: ARG002 (hook signature)
        with self._lock:
            self._started[message.message_id] = time.time()

    def after_process_message(
        self,
        broker: Broker,  # noqa: ARG002 (hook signature)
        message: MessageProxy,
        *,
        result: Any = None,  # noqa: ARG002 (hook signature)
        exception: BaseException | None = None,
    ) -> None:
        with self._lock:
            started = self._started.pop(message.message_id, None)
        if exception is not None or started is None:
            return
        options = message.options
        entry = FinishedJob(
            actor=message.actor_name,
            queue=message.queue_name,
            tenant=tenant_of(options),
            priority_level=level_of(options).name,
            wait_s=max(0.0, started - ready_at(options, message.message_timestamp)),
            retried_for=[str(attempt["classification"]) for attempt in options.get("attempt_history", [])],
        )
        _append(self.client, demo_finished_key(self.settings.namespace), entry)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:  # noqa: ARG002 (hook signature)
        with self._lock:
            self._started.pop(message.message_id, None)


class BreakerTransitions(logging.Handler):
    """Records the transitions the breaker store logs (its records carry them as ``extra`` fields)."""

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(logging.INFO)
        self.settings = settings or load_settings()
        self.client = state_store_client(self.settings)

    def emit(self, record: logging.LogRecord) -> None:
        fields = record.__dict__
        if "to_state" not in fields:
            return
        entry = BreakerTransition(
            key=str(fields["breaker"]),
            from_state=str(fields["from_state"]),
            to_state=str(fields["to_state"]),
            at=datetime.fromtimestamp(record.created, UTC),
        )
        try:
            _append(self.client, demo_breakers_key(self.settings.namespace), entry)
        except redis.RedisError:
            self.handleError(record)
