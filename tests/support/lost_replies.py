"""A worker's drain with the replies of its fetches tampered with (``store.scripts._exchange``
wrapped): tests/brokers/test_lost_replies.py on one server, tests/chaos/test_redis_cluster.py on
a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from redis.backoff import NoBackoff
from redis.retry import Retry

from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store import scripts

from .fair_support import delete_namespace, fair_broker
from .helpers import wait_for

Exchange = Callable[[Any, list[tuple[Any, ...]]], list[Any]]
JOBS = 20


def call_names(commands: list[tuple[Any, ...]]) -> list[str | None]:
    """The script command (``fetch``, ``ack``, ...) of each ``fair_redis.lua`` call of a round trip."""
    return [str(command[3 + int(command[2])]) if command[0] == "EVALSHA" else None for command in commands]


def reply_lost_once(lost: list[object]) -> Callable[[Exchange], Exchange]:
    """The first fetch that took messages runs, and its connection breaks before the reply is read."""

    def wrap(exchange: Exchange) -> Exchange:
        def wrapped(connection: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
            replies = exchange(connection, commands)  # Redis ran every call
            if "fetch" in call_names(commands) and not lost and replies[-1][0]:
                lost.append(replies[-1])
                connection.disconnect()
                raise redis.ConnectionError("Connection closed by server.")
            return replies

        return wrapped

    return wrap


def drain(
    settings: Settings, queue_name: str, monkeypatch: pytest.MonkeyPatch, wrap: Callable[[Exchange], Exchange]
) -> list[int]:
    """Runs JOBS jobs with ``scripts._exchange`` wrapped by ``wrap``; the jobs that ran."""
    broker = fair_broker(settings)
    pool = getattr(broker.client, "connection_pool", None)
    if pool is not None:
        # As on Sentinel, whose clients retry a call through a failover (connections.py): a retry
        # there must not hide the lost reply. Connections made before keep their own retry: drop them.
        pool.connection_kwargs["retry"] = Retry(NoBackoff(), 3)
        pool.reset()
    ran: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def job(i: int) -> None:
        ran.append(i)

    for i in range(JOBS):
        job.send(i)
    monkeypatch.setattr(scripts, "_exchange", wrap(scripts._exchange))
    worker = Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    try:
        wait_for(lambda: len(set(ran)) == JOBS, timeout=20)
    finally:
        worker.stop(timeout=10_000)
        delete_namespace(broker.client, settings.namespace)
        broker.close()
    return ran
