"""Payload encryption without a server: the keyring, the sealing encoder on a StubBroker, the
settings' one-line errors that never show a key, and dead-letter records sealed after redaction."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq import Message, Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import DecodeError

from dramatiq_fairway.encryption import ENVELOPE, Keyring, Undecryptable
from dramatiq_fairway.encryption.encoder import SealingEncoder
from dramatiq_fairway.errors import ConfigError
from dramatiq_fairway.middlewares.dead_letters import DeadLetters
from dramatiq_fairway.middlewares.encryption import Encryption
from dramatiq_fairway.settings import Settings, load_settings
from dramatiq_fairway.setup import install
from dramatiq_fairway.store.dead_letter_sealing import key_id_of, open_record, seal_record

CANARY = "canary-7f3a9c"
KEY_1 = base64.b64encode(os.urandom(32)).decode()
KEY_2 = base64.b64encode(os.urandom(32)).decode()


def encrypted_settings(active: str = "k1", **keys: str) -> Settings:
    return Settings(broker="redis", encryption={"keys": keys or {"k1": KEY_1}, "active": active})  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def restore_encoder() -> Iterator[None]:
    """The encoder is process-wide in Dramatiq: each test leaves the one it found."""
    previous = dramatiq.get_encoder()
    yield
    dramatiq.set_encoder(previous)


def keyring(active: str = "k1") -> Keyring:
    return Keyring({"k1": base64.b64decode(KEY_1), "k2": base64.b64decode(KEY_2)}, active)


def test_sealed_payload_opens_with_its_key_and_binds_the_message_id() -> None:
    ring = keyring()
    envelope = ring.seal([CANARY], {"note": CANARY}, "id-1")
    assert CANARY not in json.dumps(envelope)
    assert envelope["kid"] == "k1"
    assert ring.open(envelope, "id-1") == ([CANARY], {"note": CANARY})
    with pytest.raises(Undecryptable, match="fails authentication"):
        ring.open(envelope, "id-2")


def test_tampered_and_unknown_key_envelopes_are_undecryptable() -> None:
    ring = keyring()
    envelope = ring.seal([CANARY], {}, "id-1")
    flipped = bytearray(base64.b64decode(envelope["ct"]))
    flipped[0] ^= 1
    with pytest.raises(Undecryptable, match="fails authentication"):
        ring.open({**envelope, "ct": base64.b64encode(bytes(flipped)).decode()}, "id-1")
    with pytest.raises(Undecryptable, match="unknown key id 'k9'"):
        ring.open({**envelope, "kid": "k9"}, "id-1")


def test_keyring_repr_names_key_ids_only() -> None:
    text = repr(keyring())
    assert "k1" in text
    assert KEY_1 not in text
    assert str(base64.b64decode(KEY_1)) not in text


def test_encoder_seals_args_and_kwargs_and_keeps_the_rest_readable() -> None:
    encoder = SealingEncoder(keyring())
    message = Message(queue_name="q", actor_name="a", args=(CANARY,), kwargs={"k": CANARY}, options={"tenant": "t"})
    body = encoder.encode(message.asdict())
    wire = json.loads(body)
    assert CANARY.encode() not in body
    assert (wire["args"], wire["kwargs"]) == ([], {})
    assert (wire["queue_name"], wire["actor_name"], wire["options"]["tenant"]) == ("q", "a", "t")
    decoded = encoder.decode(body)
    assert (decoded["args"], decoded["kwargs"]) == ([CANARY], {"k": CANARY})
    assert ENVELOPE not in decoded["options"]


def test_rotated_keyring_opens_messages_sealed_under_the_old_key() -> None:
    body = SealingEncoder(keyring("k1")).encode(
        Message(queue_name="q", actor_name="a", args=(CANARY,), kwargs={}, options={}).asdict()
    )
    rotated = SealingEncoder(keyring("k2"))
    assert rotated.decode(body)["args"] == [CANARY]
    assert json.loads(rotated.encode(rotated.decode(body)))["options"][ENVELOPE]["kid"] == "k2"


def test_unknown_key_fails_to_decode_with_the_readable_fields() -> None:
    only_k2 = Keyring({"k2": base64.b64decode(KEY_2)}, "k2")
    body = SealingEncoder(keyring("k1")).encode(
        Message(queue_name="q", actor_name="a", args=(CANARY,), kwargs={}, options={}).asdict()
    )
    dramatiq.set_encoder(SealingEncoder(only_k2))
    with pytest.raises(DecodeError) as caught:
        Message.decode(body)
    cause = caught.value.__cause__
    assert isinstance(cause, Undecryptable)
    assert cause.message["actor_name"] == "a"


def test_install_places_encryption_first_of_the_fairway_stack() -> None:
    broker = StubBroker()
    install(broker, encrypted_settings())
    names = [type(m).__name__ for m in broker.middleware]
    assert names.index("Encryption") == names.index("JobLogContext") - 1


def test_job_on_stub_broker_receives_the_canary_sealed_on_the_queue() -> None:
    broker = StubBroker()
    broker.add_middleware(Encryption(encrypted_settings()))
    received: list[Any] = []

    @dramatiq.actor(broker=broker, queue_name="enc")
    def remember(value: str, *, note: str) -> None:
        received.append((value, note))

    remember.send(CANARY, note=CANARY)
    queued = broker.queues["enc"].queue[0]
    assert CANARY.encode() not in queued
    worker = Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join("enc")
        worker.join()
    finally:
        worker.stop()
    assert received == [(CANARY, CANARY)]


def test_install_without_keys_adds_no_encryption() -> None:
    broker = StubBroker()
    install(broker, Settings(broker="redis"))
    assert not any(isinstance(m, Encryption) for m in broker.middleware)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"KEYS": '{"k1": "not base64!"}', "ACTIVE": "k1"}, "FAIRWAY_ENCRYPTION__KEYS: '****' key 'k1' is not base64"),
        ({"KEYS": '{"k1": "QUJD"}', "ACTIVE": "k1"}, "FAIRWAY_ENCRYPTION__KEYS: '****' key 'k1' is 3 bytes, not 32"),
        (
            {"KEYS": f'{{"k1": "{KEY_1}"}}', "ACTIVE": "k2"},
            "FAIRWAY_ENCRYPTION__ACTIVE: 'k2' is not a key id of FAIRWAY_ENCRYPTION__KEYS (k1)",
        ),
        ({"KEYS": f'{{"k1": "{KEY_1}"'}, "FAIRWAY_ENCRYPTION__KEYS: **** is not valid JSON"),
        ({"KEYS": f'{{"k1": "{KEY_1}"}}'}, "FAIRWAY_ENCRYPTION__ACTIVE: None must name the key new messages use"),
    ],
)
def test_bad_settings_name_the_field_and_never_the_key(
    env: dict[str, str], line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"FAIRWAY_ENCRYPTION__{name}", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(line)
    assert KEY_1 not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_masked_settings_hide_the_keys() -> None:
    masked = json.dumps(encrypted_settings().masked())
    assert KEY_1 not in masked
    assert '"k1"' in masked


def test_dead_letter_record_is_redacted_then_sealed() -> None:
    stub = StubBroker()

    @dramatiq.actor(broker=stub, queue_name="q")
    def login(user: str, password: str) -> None: ...

    proxy = MessageProxy(Message(queue_name="q", actor_name="login", args=(CANARY, "hunter2"), kwargs={}, options={}))
    proxy.stuff_exception(ValueError("no"))
    middleware = DeadLetters(settings=encrypted_settings())
    record = middleware.build_record(stub, proxy)
    stored = record.model_dump_json()
    assert CANARY not in stored
    assert "hunter2" not in stored
    assert key_id_of(record) == "k1"
    opened = open_record(record, middleware.keyring)
    assert opened.args == [CANARY, "[redacted:password]"]
    assert opened.raw["args"] == [CANARY, "[redacted:password]"]
    assert ENVELOPE not in opened.options
    assert seal_record(record, middleware.keyring) is record


def test_sealed_record_without_keys_says_which_key_it_needs() -> None:
    stub = StubBroker()

    @dramatiq.actor(broker=stub, queue_name="q")
    def job(value: str) -> None: ...

    proxy = MessageProxy(Message(queue_name="q", actor_name="job", args=(CANARY,), kwargs={}, options={}))
    record = DeadLetters(settings=encrypted_settings()).build_record(stub, proxy)
    with pytest.raises(Undecryptable, match="sealed under key 'k1' and FAIRWAY_ENCRYPTION__KEYS is not set"):
        open_record(record, None)


def test_undecryptable_body_is_recorded_with_its_ciphertext() -> None:
    class MemoryStore:
        def __init__(self) -> None:
            self.records: list[Any] = []

        def add(self, record: Any) -> str:
            self.records.append(record)
            return "stored"

    body = SealingEncoder(keyring("k1")).encode(
        Message(queue_name="q", actor_name="a", args=(CANARY,), kwargs={}, options={"tenant": "acme"}).asdict()
    )
    dramatiq.set_encoder(SealingEncoder(Keyring({"k2": base64.b64decode(KEY_2)}, "k2")))
    with pytest.raises(DecodeError) as caught:
        Message.decode(body)
    store = MemoryStore()
    DeadLetters(settings=encrypted_settings(), store=store).record_undecodable(StubBroker(), "q", body, caught.value)  # type: ignore[arg-type]
    (record,) = store.records
    assert (record.reason, record.actor, record.tenant) == ("undecryptable", "a", "acme")
    assert "unknown key id 'k1'" in record.error_message
    assert CANARY not in record.model_dump_json()
    assert key_id_of(record) == "k1"
    assert open_record(record, keyring()).args == [CANARY]


def test_pipeline_steps_are_sealed_for_their_own_ids_and_get_the_previous_result() -> None:
    broker = StubBroker()
    broker.add_middleware(Encryption(encrypted_settings()))
    received: list[Any] = []

    @dramatiq.actor(broker=broker, queue_name="enc")
    def first(value: str) -> str:
        return value.upper()

    @dramatiq.actor(broker=broker, queue_name="enc")
    def second(value: str, previous: str) -> None:
        received.append((value, previous))

    dramatiq.pipeline([first.message(CANARY), second.message(f"{CANARY}-2")], broker=broker).run()
    queued = broker.queues["enc"].queue[0]
    assert CANARY.encode() not in queued
    assert b"pipe_target" in queued
    worker = Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join("enc")
        worker.join()
    finally:
        worker.stop()
    assert received == [(f"{CANARY}-2", CANARY.upper())]
