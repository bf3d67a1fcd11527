"""A fetch whose reply is lost on the wire (the master died after running it, or the connection
broke), or dropped because another call of its round trip answered with an error, must surface
as an error, so that the broker requeues what the call moved into this worker's ack set: a retry
inside the client that then succeeded would leave those messages in the ack set of a live worker,
where no one ever recovers them (seen in the Sentinel failover chaos test: one job in ten runs
stuck in flight)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ClusterDownError

from dramatiq_fairway.settings import Settings

from ..conftest import SINGLE_REDIS_URL
from ..support.lost_replies import JOBS, Exchange, call_names, drain, reply_lost_once


def _settings(namespace: str, data_dir: Path) -> Settings:
    # One server, whatever the suite runs on: a cluster's calls go through per-node pipelines
    # (tests/chaos/test_redis_cluster.py has the cluster's case).
    return Settings(
        broker="redis", redis_url=SINGLE_REDIS_URL, state_url=SINGLE_REDIS_URL, namespace=namespace, data_dir=data_dir
    )


def test_a_fetch_run_by_redis_whose_reply_is_lost_loses_no_message(
    namespace: str, short_tmp: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost: list[object] = []
    ran = drain(_settings(namespace, short_tmp), queue_name, monkeypatch, reply_lost_once(lost))
    assert lost
    assert sorted(set(ran)) == list(range(JOBS))


def test_a_fetch_that_ran_beside_a_settle_answered_with_an_error_loses_no_message(
    namespace: str, short_tmp: Path, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a Redis Cluster node answers when its view of the cluster turns from "fail" back to "ok"
    # within one round trip: the settle before the fetch gets CLUSTERDOWN, the fetch runs.
    refused: list[object] = []

    def settle_refused_once(exchange: Exchange) -> Exchange:
        def wrapped(connection: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
            replies = exchange(connection, commands)
            names = call_names(commands)
            if not refused and names[-1] == "fetch" and names[0] in ("ack", "nack") and replies[-1][0]:
                refused.append(replies[-1])
                replies[0] = ClusterDownError("The cluster is down")
            return replies

        return wrapped

    ran = drain(_settings(namespace, short_tmp), queue_name, monkeypatch, settle_refused_once)
    assert refused
    assert sorted(set(ran)) == list(range(JOBS))
