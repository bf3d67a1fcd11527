"""One ``send`` on FairRedisBroker is one round trip when the state store is the broker's Redis
(``store/send_writes.py``): the PENDING status rides in the enqueue pipeline."""

from __future__ import annotations

import dramatiq
import pytest
import redis
from dramatiq import Broker
from redis.cluster import RedisCluster

from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.middlewares.status import JobStatus
from dramatiq_fairway.store.scripts import LuaScript, ScriptCall
from dramatiq_fairway.store.send_writes import server_of
from dramatiq_fairway.store.status import JobState, JobStatusStore

from ..support.helpers import redis_writes

pytestmark = pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)

FAILING = LuaScript.from_text("return redis.error_reply('status write refused')")


def _status(broker: Broker) -> JobStatus:
    return next(m for m in broker.middleware if isinstance(m, JobStatus))


def test_a_send_is_one_round_trip_with_its_pending_status(
    broker: Broker, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(broker, FairRedisBroker)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(n: int) -> None: ...

    job.send(0)  # declares, script loads and the status store's first connection out of the count
    sent = redis_writes(monkeypatch)
    message = job.send(1)
    monkeypatch.undo()

    # One pipeline; a cluster sends it to each node holding one of its keys, at once.
    keys = [broker._queue_prefix(queue_name), _status(broker).store.job_key(message.message_id)]
    assert len(sent) == len({_node(broker.client, key) for key in keys})
    record = _status(broker).store.get(message.message_id)
    assert record is not None
    assert record.state is JobState.PENDING


def _node(client: redis.Redis, key: str) -> str:
    return client.get_node_from_key(key).name if isinstance(client, RedisCluster) else "the server"


def test_a_failed_status_write_is_dropped_and_the_send_still_succeeds(
    broker: Broker, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(n: int) -> None: ...

    status = _status(broker)
    monkeypatch.setattr(JobStatusStore, "enqueued_call", lambda *_, **__: ScriptCall(FAILING, ["k"], []))
    before = status.dropped_updates
    message = job.send(1)

    assert status.dropped_updates == before + 1
    assert status.store.get(message.message_id) is None
    assert broker.join_size(queue_name) == 1  # type: ignore[attr-defined]


def test_a_state_store_on_another_server_writes_pending_on_its_own(
    broker: Broker, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(n: int) -> None: ...

    status = _status(broker)
    other = redis.Redis(host="localhost", port=6379)  # the same server under another name: not matched
    assert server_of(other) != server_of(broker.client)  # type: ignore[attr-defined]
    monkeypatch.setattr(status.store, "client", other)
    calls: list[str] = []
    enqueued = JobStatusStore.enqueued
    monkeypatch.setattr(
        JobStatusStore, "enqueued", lambda self, *args: (calls.append(args[0]), enqueued(self, *args))[1]
    )
    message = job.send(1)

    assert calls == [message.message_id]
    record = status.store.get(message.message_id)
    assert record is not None
    assert record.state is JobState.PENDING
