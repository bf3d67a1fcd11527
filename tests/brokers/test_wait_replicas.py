"""``FAIRWAY_REDIS_WAIT_REPLICAS``: enqueue, settle and dead-letter writes end with one ``WAIT``, none when 0.

Counted with ``INFO commandstats`` on a throwaway master (tests/support/redis_sentinel.py), which
no one else talks to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dramatiq
import pytest
import redis

from dramatiq_fairway.connections import redis_client
from dramatiq_fairway.settings import Settings, TlsSettings
from dramatiq_fairway.store import scripts
from dramatiq_fairway.store.dead_letter_model import DeadLetter
from dramatiq_fairway.store.dead_letters import DeadLetterStore
from dramatiq_fairway.store.scripts import LuaScript, ScriptCall, run_scripts

from ..support.fair_support import fair_broker
from ..support.redis_sentinel import SentinelGroup, sentinel_group

pytestmark = pytest.mark.sentinel

_SET = LuaScript.from_text("return redis.call('SET', KEYS[1], ARGV[1])")


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    with sentinel_group(Path(tmp_path_factory.mktemp("sentinel")), replicas=2) as started:
        yield started


def _waits(group: SentinelGroup) -> int:
    client = redis.Redis(port=group.master_port())
    try:
        return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))
    finally:
        client.close()


@pytest.mark.parametrize("wait_replicas", [0, 2])
def test_enqueue_and_settle_send_one_wait_each_only_when_asked(
    group: SentinelGroup, namespace: str, queue_name: str, short_tmp: Path, wait_replicas: int
) -> None:
    settings = Settings(
        broker="redis", redis_url=group.url, namespace=namespace, data_dir=short_tmp, redis_wait_replicas=wait_replicas
    )
    broker = fair_broker(settings)

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def noop() -> None:
        """A job to enqueue."""

    assert broker.join_size(queue_name) == 0  # loads the script: no NOSCRIPT round trip below
    before = _waits(group)
    message = noop.send()
    after_enqueue = _waits(group)
    [(rid, _body)] = broker.fetch(queue_name, 1)
    assert rid == message.options["redis_message_id"]
    broker.settle(queue_name, "ack", [rid])
    after_ack = _waits(group)
    broker.close()
    assert (after_enqueue - before, after_ack - after_enqueue) == (min(wait_replicas, 1), min(wait_replicas, 1))
    assert broker.join_size(queue_name) == 0


def test_dead_letter_writes_wait_for_the_replicas(group: SentinelGroup, namespace: str, short_tmp: Path) -> None:
    settings = Settings(
        broker="redis", redis_url=group.url, namespace=namespace, data_dir=short_tmp, redis_wait_replicas=2
    )
    store = DeadLetterStore(settings)
    record = DeadLetter(id="m1", queue="q", actor="a", fingerprint="f", failed_at=datetime.now(UTC), reason="permanent")
    # The first write loads the script (a NOSCRIPT reply and a second round trip with its own WAIT).
    assert store.add(record.model_copy(update={"id": "m0"})) == "stored"
    before = _waits(group)
    assert store.add(record) == "stored"
    assert _waits(group) - before == 1
    store.client.close()


def test_fewer_replicas_than_asked_warns_once_and_keeps_the_write(
    group: SentinelGroup, namespace: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scripts, "WAIT_TIMEOUT_MS", 20)
    monkeypatch.setattr(scripts, "_under_replicated", scripts.OutageWarning(scripts.logger))
    client = redis_client(group.url, TlsSettings())
    key = f"{namespace}:k"
    with caplog.at_level(logging.WARNING, logger=scripts.__name__):
        for value in ("1", "2"):
            run_scripts(client, [ScriptCall(_SET, [key], [value])], replicas=3)
    assert client.get(key) == b"2"
    warnings = [record.getMessage() for record in caplog.records if record.name == scripts.__name__]
    assert len(warnings) == 1
    assert "Only 2 of 3 replica(s) acknowledged a write within 20 ms" in warnings[0]
    client.close()
