"""One ``send`` on FairRabbitmqBroker costs one state-store round trip (``store/send_writes.py``):
the PENDING status rides with the tenant count, which travels while the message is published once
the tenant was routed recently; a publish that fails for good takes both back."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import dramatiq
import pika.exceptions
import pytest
from dramatiq import Broker
from dramatiq.errors import ConnectionClosed
from pika.adapters.utils.io_services_utils import _AsyncTransportBase

from dramatiq_fairway.brokers import rabbitmq
from dramatiq_fairway.brokers.rabbitmq import FairRabbitmqBroker
from dramatiq_fairway.middlewares.status import JobStatus
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.scripts import run_scripts
from dramatiq_fairway.store.status import JobState, JobStatusStore
from dramatiq_fairway.store.tenant_counts import LANE, Slot

from ..support.helpers import redis_writes
from .test_rabbitmq_fair import delete_level_queues

pytestmark = pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
N = Priority.NORMAL


@pytest.fixture
def rabbit(broker: Broker, settings: Settings) -> Iterator[FairRabbitmqBroker]:
    assert isinstance(broker, FairRabbitmqBroker)
    yield broker
    delete_level_queues(broker, settings)


def _store(broker: Broker) -> JobStatusStore:
    return next(m for m in broker.middleware if isinstance(m, JobStatus)).store


def test_a_send_is_one_state_store_round_trip_with_its_pending_status(
    rabbit: FairRabbitmqBroker, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dramatiq.actor(broker=rabbit, queue_name=queue_name)
    def job(n: int) -> None: ...

    job.send_with_options(args=(0,), tenant="warm")  # declares, script loads, connections
    sent = redis_writes(monkeypatch)
    first = job.send_with_options(args=(1,), tenant="new")  # routed before the publish
    again = job.send_with_options(args=(2,), tenant="new")  # counted while it is published
    monkeypatch.undo()

    assert len(sent) == 2
    for message in (first, again):
        record = _store(rabbit).get(message.message_id)
        assert record is not None
        assert record.state is JobState.PENDING
    assert rabbit.tenant_counts is not None
    assert rabbit.tenant_counts.snapshot(queue_name) == {Slot(LANE, N, "warm"): 1, Slot(LANE, N, "new"): 2}
    assert rabbit.passive_count(rabbit.tenant_routes.lane(first)) >= 2


def test_a_tenant_over_the_threshold_goes_to_its_own_queue_with_the_count_in_flight(
    rabbit: FairRabbitmqBroker, queue_name: str
) -> None:
    rabbit.tenant_routes.isolate_at = 3

    @dramatiq.actor(broker=rabbit, queue_name=queue_name)
    def job(n: int) -> None: ...

    for n in range(5):
        job.send_with_options(args=(n,), tenant="acme")
    assert rabbit.tenant_counts is not None
    counts = rabbit.tenant_counts.snapshot(queue_name)
    assert {slot.kind: n for slot, n in counts.items()} == {"l": 3, "o": 2}
    [(_, own)] = rabbit.tenant_queues(queue_name)
    assert rabbit.passive_count(own) == 2


@pytest.mark.parametrize("routed_before", [False, True])
def test_a_publish_that_fails_for_good_takes_back_its_count_and_pending_status(
    rabbit: FairRabbitmqBroker, queue_name: str, monkeypatch: pytest.MonkeyPatch, routed_before: bool
) -> None:
    @dramatiq.actor(broker=rabbit, queue_name=queue_name)
    def job(n: int) -> None: ...

    kept = job.send_with_options(args=(0,), tenant="acme" if routed_before else "other")

    def refused(*_: object) -> None:
        raise pika.exceptions.AMQPConnectionError("gone")

    monkeypatch.setattr(rabbitmq, "PUBLISH_PAUSES", ())
    monkeypatch.setattr(rabbit, "_publish", refused)
    message = job.message_with_options(args=(1,), tenant="acme")
    with pytest.raises(ConnectionClosed):
        rabbit.enqueue(message)
    monkeypatch.undo()

    assert _store(rabbit).get(message.message_id) is None
    assert rabbit.tenant_counts is not None
    tenant = "acme" if routed_before else "other"
    assert rabbit.tenant_counts.snapshot(queue_name) == {Slot(LANE, N, tenant): 1}
    record = _store(rabbit).get(kept.message_id)
    assert record is not None
    assert record.state is JobState.PENDING


def test_taking_back_a_pending_status_leaves_a_job_known_before(rabbit: FairRabbitmqBroker) -> None:
    store = _store(rabbit)
    store.enqueued("known", "job", "q")
    store.finish("known", JobState.RETRY, "job", "q")
    at = store.now()
    run_scripts(store.client, [store.enqueued_call("known", "job", "q", at=at), store.unsent_call("known", at)])
    record = store.get("known")
    assert record is not None
    assert record.state is JobState.RETRY
    run_scripts(store.client, [store.enqueued_call("fresh", "job", "q", at=at), store.unsent_call("fresh", at)])
    assert store.get("fresh") is None


def test_a_send_is_one_socket_write_to_rabbitmq(
    rabbit: FairRabbitmqBroker, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pika writes a message's method, header and body frames with a send() each; the broker's
    # connection joins them (rabbitmq_wire.py), and a large body's several frames too.
    @dramatiq.actor(broker=rabbit, queue_name=queue_name)
    def job(text: str) -> None: ...

    job.send("warm")
    written: list[bytes] = []
    send = _AsyncTransportBase._sigint_safe_send

    def counting(sock: socket.socket, data: bytes) -> int:
        written.append(bytes(data))
        return send(sock, data)

    monkeypatch.setattr(_AsyncTransportBase, "_sigint_safe_send", staticmethod(counting))
    small = job.send("small")
    large = job.send("x" * 3 * rabbit.connection._impl._body_max_length)
    monkeypatch.undo()

    assert len(written) == 2
    assert small.message_id.encode() in written[0]
    assert large.message_id.encode() in written[1]
    assert rabbit.passive_count(rabbit.tenant_routes.lane(small)) == 3
