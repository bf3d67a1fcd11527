"""Encryption end to end on real Redis and real RabbitMQ (docs/encryption.md): a canary sent as an
argument is in no Redis key of the namespace and no AMQP body, yet the job gets it; a rotated key
still opens what was queued; an unknown-key, tampered or moved envelope is dead-lettered as
``undecryptable`` while the worker goes on; ``dlq show`` decrypts; ``encryption rotate`` re-seals."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pytest
import redis
from dramatiq import Broker, Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from dramatiq_fairway.brokers.rabbitmq import FairwayRabbitmqBroker
from dramatiq_fairway.cli import main as fairway_main
from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.encryption import ENVELOPE, Keyring
from dramatiq_fairway.encryption.encoder import SealingEncoder
from dramatiq_fairway.ops.encryption import rotate_dead_letters
from dramatiq_fairway.settings import EncryptionSettings, Settings
from dramatiq_fairway.store.dead_letter_sealing import key_id_of
from dramatiq_fairway.store.dead_letters import DeadLetterStore
from dramatiq_fairway.store.status import JobState, JobStatusStore

from ..conftest import REDIS_URL
from ..core.test_redaction_e2e import every_key_and_value
from ..support.helpers import settings_env, wait_for

CANARY = "canary-e2e-5b1d0f"
KEYS = {kid: base64.b64encode(os.urandom(32)).decode() for kid in ("k1", "k2", "k9")}


def keyring(active: str, *kids: str) -> Keyring:
    return Keyring({kid: base64.b64decode(KEYS[kid]) for kid in (active, *kids)}, active)


@pytest.fixture(autouse=True)
def restore_encoder() -> Iterator[None]:
    """The Encryption middleware sets Dramatiq's process-wide encoder; each test leaves the one it found."""
    previous = dramatiq.get_encoder()
    yield
    dramatiq.set_encoder(previous)


@pytest.fixture
def settings(broker_kind: str, namespace: str, short_tmp: Path, state_client: redis.Redis) -> Settings:
    """The harness' settings with encryption on: k1 and k2 known, k1 active."""
    return Settings(
        broker=broker_kind,  # type: ignore[arg-type]
        namespace=namespace,
        redis_url=REDIS_URL,
        state_url=REDIS_URL,
        data_dir=short_tmp,
        encryption={"keys": {"k1": KEYS["k1"], "k2": KEYS["k2"]}, "active": "k1"},  # type: ignore[arg-type]
    )


def amqp_bodies(broker: Broker, settings: Settings, queue_name: str) -> list[bytes]:
    """Every body waiting in the queue's AMQP queues, read with plain pika and left there."""
    assert isinstance(broker, FairwayRabbitmqBroker)
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    channel = connection.channel()
    bodies = []
    for name in (queue_name, *broker.level_queues(queue_name)):
        while (got := channel.basic_get(name, auto_ack=False))[0] is not None:
            bodies.append(got[2])
    connection.close()  # unacked: every message goes back to its queue
    return bodies


def use_cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, keys: dict[str, str], active: str) -> None:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FAIRWAY_ENCRYPTION__KEYS", json.dumps(keys))
    monkeypatch.setenv("FAIRWAY_ENCRYPTION__ACTIVE", active)


def test_canary_is_sealed_on_the_wire_and_in_every_store_yet_the_job_gets_it(
    broker: Broker,
    settings: Settings,
    queue_name: str,
    start_worker: Callable[..., Worker],
    state_client: redis.Redis,
) -> None:
    received: list[Any] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def keep(value: str, *, note: str, fail: bool = False) -> None:
        if fail:
            raise ValueError("refused")
        received.append((value, note))

    ok = keep.send(CANARY, note=CANARY)
    failing = keep.send_with_options(args=(CANARY,), kwargs={"note": CANARY, "fail": True})
    if isinstance(broker, RabbitmqBroker):
        bodies = wait_for(lambda: len(found := amqp_bodies(broker, settings, queue_name)) == 2 and found)
        assert all(CANARY.encode() not in body and ENVELOPE.encode() in body for body in bodies)
    queued = b"\n".join(every_key_and_value(state_client, settings.namespace))
    assert ok.message_id.encode() in queued  # the scan does read what was written at send
    assert CANARY.encode() not in queued

    start_worker()
    wait_for(lambda: received)
    assert received == [(CANARY, CANARY)]
    store = DeadLetterStore(settings)
    record = wait_for(lambda: store.get(failing.message_id))
    assert key_id_of(record) == "k1"
    jobs = JobStatusStore.from_settings(settings)
    wait_for(lambda: (job := jobs.get(ok.message_id)) is not None and job.state is JobState.SUCCESS)

    stored = b"\n".join(every_key_and_value(state_client, settings.namespace))
    assert failing.message_id.encode() in stored  # the scan does read the dead-letter store
    assert CANARY.encode() not in stored


def test_rotated_keyring_still_opens_queued_messages(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    received: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def keep(value: str) -> None:
        received.append(value)

    keep.send(f"{CANARY}-now")
    keep.send_with_options(args=(f"{CANARY}-later",), delay=300)
    # The workers restart with k2 active and k1 kept for what is still queued and delayed.
    dramatiq.set_encoder(SealingEncoder(keyring("k2", "k1")))
    start_worker()
    wait_for(lambda: len(received) == 2)
    assert sorted(received) == [f"{CANARY}-later", f"{CANARY}-now"]


class Tampering(SealingEncoder):
    """Seals, then breaks the envelope the way ``how`` says."""

    def __init__(self, ring: Keyring, how: str) -> None:
        super().__init__(ring)
        self.how = how

    def encode(self, data: dict[str, Any]) -> bytes:
        fields = json.loads(super().encode(data))
        envelope = fields["options"][ENVELOPE]
        if self.how == "flip":
            ct = bytearray(base64.b64decode(envelope["ct"]))
            ct[-1] ^= 1
            envelope["ct"] = base64.b64encode(bytes(ct)).decode()
        elif self.how == "moved":
            envelope.update(self.keyring.seal([CANARY], {}, "another-message-id"))
        return json.dumps(fields).encode()


def test_undecryptable_messages_are_dead_lettered_and_the_worker_goes_on(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    received: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def keep(value: str) -> None:
        received.append(value)

    worker_encoder = dramatiq.get_encoder()
    bad = {}
    for name, encoder in (
        ("unknown key", SealingEncoder(keyring("k9"))),
        ("tampered", Tampering(keyring("k1"), "flip")),
        ("moved", Tampering(keyring("k1"), "moved")),
    ):
        dramatiq.set_encoder(encoder)
        bad[name] = keep.send(CANARY).message_id
    dramatiq.set_encoder(worker_encoder)
    keep.send("good")
    start_worker()
    wait_for(lambda: received)
    store = DeadLetterStore(settings)
    records = {name: wait_for(lambda id=message_id: store.get(id)) for name, message_id in bad.items()}
    assert received == ["good"]
    assert {name: r.reason for name, r in records.items()} == dict.fromkeys(bad, "undecryptable")
    assert "unknown key id 'k9'" in (records["unknown key"].error_message or "")
    assert "fails authentication" in (records["tampered"].error_message or "")
    assert "fails authentication" in (records["moved"].error_message or "")
    assert all(r.actor == "keep" and CANARY not in r.model_dump_json() for r in records.values())
    jobs = JobStatusStore.from_settings(settings)
    for message_id in bad.values():
        wait_for(lambda id=message_id: (job := jobs.get(id)) is not None and job.state is JobState.REJECTED)


def test_dlq_show_decrypts_and_rotate_reseals_with_the_active_key(  # noqa: PLR0917 (fixtures)
    broker: Broker,
    settings: Settings,
    queue_name: str,
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def fail(value: str) -> None:
        raise ValueError("no")

    message = fail.send(CANARY)
    start_worker()
    store = DeadLetterStore(settings)
    wait_for(lambda: store.get(message.message_id))

    use_cli(settings, monkeypatch, {"k1": KEYS["k1"], "k2": KEYS["k2"]}, "k2")
    assert fairway_main(["dlq", "show", message.message_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["args"] == [CANARY]
    assert shown["encryption"] == {"key_id": "k1", "decrypted": True, "undecrypted": []}

    assert fairway_main(["encryption", "rotate", "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["before"], dry["resealed"], dry["old_keys_in_use"]) == ({"k1": 1}, 1, {})
    assert key_id_of(store.get(message.message_id)) == "k1"  # type: ignore[arg-type]

    assert fairway_main(["encryption", "rotate", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert (done["before"], done["after"], done["resealed"]) == ({"k1": 1}, {"k2": 1}, 1)
    record = store.get(message.message_id)
    assert record is not None
    assert key_id_of(record) == "k2"
    assert CANARY not in record.model_dump_json()

    # k1 retired: the re-sealed record still opens; with k2 gone too, show says what it could not open.
    use_cli(settings, monkeypatch, {"k2": KEYS["k2"]}, "k2")
    assert fairway_main(["dlq", "show", message.message_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["args"] == [CANARY]
    use_cli(settings, monkeypatch, {"k9": KEYS["k9"]}, "k9")
    assert fairway_main(["dlq", "show", message.message_id]) == 0
    out = capsys.readouterr().out
    assert "could not decrypt args, kwargs (key 'k2'): unknown key id 'k2'" in out
    assert CANARY not in out
    only_k9 = EncryptionSettings(keys={"k9": KEYS["k9"]}, active="k9")  # type: ignore[arg-type]
    retired = rotate_dead_letters(settings.model_copy(update={"encryption": only_k9}))
    assert [(item.id, item.key_id) for item in retired.unopened] == [(message.message_id, "k2")]
    assert (retired.resealed, retired.old_keys_in_use) == (0, {"k2": 1})
