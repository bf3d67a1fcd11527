"""``server_of``: which clients may share the broker's enqueue pipeline (store/send_writes.py)."""

from __future__ import annotations

import redis

from dramatiq_fairway.connections import redis_client
from dramatiq_fairway.settings import TlsSettings
from dramatiq_fairway.store.send_writes import server_of

URL = "redis+sentinel://s1:26379,s2:26380/orders/2"


def test_two_clients_of_one_sentinel_service_name_the_same_server() -> None:
    # The broker's client and the state store's are separate pools of the same URL: the PENDING
    # status rides in the enqueue pipeline (one round trip per send) on Sentinel too.
    broker, state = redis_client(URL, TlsSettings()), redis_client(URL, TlsSettings())
    assert server_of(broker) == server_of(state) == ("sentinel", "orders", ("s1", 26379), ("s2", 26380), 2)


def test_another_service_db_or_sentinel_set_is_another_server() -> None:
    mine = server_of(redis_client(URL, TlsSettings()))
    for other in (
        "redis+sentinel://s1:26379,s2:26380/billing/2",
        "redis+sentinel://s1:26379,s2:26380/orders/3",
        "redis+sentinel://s1:26379/orders/2",
    ):
        assert server_of(redis_client(other, TlsSettings())) != mine, other


def test_a_replica_pool_names_no_server() -> None:
    client = redis_client(URL, TlsSettings())
    replicas = client.connection_pool.sentinel_manager.slave_for("orders")  # type: ignore[attr-defined]
    assert isinstance(replicas, redis.Redis)
    assert server_of(replicas) == ()
