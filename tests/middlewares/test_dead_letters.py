"""DeadLetters on real Redis and real RabbitMQ: records, redaction, unknown actors, undecodable
bodies, requeue and the spool."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

import dramatiq
import pika
import pytest
import redis
from dramatiq import Broker, Message, Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import xq_name
from dramatiq.errors import DecodeError

from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.errors import PermanentError
from dramatiq_fairway.failures.redaction_rules import placeholder
from dramatiq_fairway.middlewares.dead_letters import DeadLetters
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.dead_letters import DeadLetter, DeadLetterFilter, DeadLetterStore, RedactedRecords

from ..support.helpers import free_port, wait_for


def dead_letters_of(broker: Broker) -> DeadLetters:
    return next(m for m in broker.middleware if isinstance(m, DeadLetters))


def record_of(broker: Broker, message_id: str) -> DeadLetter | None:
    return dead_letters_of(broker).store.get(message_id)


def xq_depth(broker: Broker, settings: Settings, queue_name: str) -> int:
    if isinstance(broker, RedisBroker):
        return int(broker.client.zcard(f"{broker.namespace}:{xq_name(queue_name)}"))
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    try:
        declared = connection.channel().queue_declare(xq_name(queue_name), passive=True)
        return int(declared.method.message_count)
    finally:
        connection.close()


def stored_values(client: redis.Redis, namespace: str) -> list[bytes]:
    """Every member, field and value of every key of the test's namespace."""
    readers = {
        b"string": lambda key: [client.get(key)],
        b"hash": lambda key: [item for pair in client.hgetall(key).items() for item in pair],
        b"zset": lambda key: client.zrange(key, 0, -1),
        b"set": lambda key: list(client.smembers(key)),
        b"list": lambda key: client.lrange(key, 0, -1),
    }
    return [value for key in client.scan_iter(match=f"{namespace}:*") for value in readers[client.type(key)](key)]


def push_raw(settings: Settings, queue_name: str, body: bytes) -> None:
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    connection.channel().basic_publish(exchange="", routing_key=queue_name, body=body)
    connection.close()


def test_failed_job_gets_a_record_with_the_right_fields(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def lookup(user_id: int) -> None:
        raise TimeoutError(f"user {user_id} service timed out")

    message = lookup.send_with_options(args=(7,), tenant="acme")
    start_worker()
    record = wait_for(lambda: record_of(broker, message.message_id))
    assert record.queue == queue_name
    assert record.actor == "lookup"
    assert record.args == [7]
    assert record.reason == "retries_exhausted"
    assert record.error_type == "TimeoutError"
    assert "user 7 service timed out" in (record.error_message or "")
    assert "in lookup" in (record.traceback or "")
    assert record.tenant == "acme"
    assert record.priority_level == "NORMAL"
    assert record.retries == 0
    assert len(record.fingerprint) == 16
    assert record.enqueued_at is not None
    assert record.enqueued_at <= record.failed_at
    assert record.raw["actor_name"] == "lookup"
    assert record.redacted_fields == []
    broker.join(queue_name, timeout=10_000)
    if isinstance(broker, RabbitmqBroker):
        # Recorded, so acked rather than moved to .XQ.
        assert xq_depth(broker, settings, queue_name) == 0


def test_permanent_error_is_recorded_as_permanent(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=5)
    def parse() -> None:
        raise PermanentError("bad input")

    message = parse.send()
    start_worker()
    record = wait_for(lambda: record_of(broker, message.message_id))
    assert record.reason == "permanent"
    assert record.error_type == "dramatiq_fairway.errors.PermanentError"
    assert record.retries == 0


def test_secrets_are_redacted_everywhere(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker], caplog: pytest.LogCaptureFixture
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def login(user: str, password: str, api_token: str = "") -> None:
        raise ValueError("login refused")

    caplog.set_level(logging.DEBUG)
    message = login.send_with_options(
        args=("ann", "hunter2-positional"),
        kwargs={"api_token": "tok-kwarg-secret"},
        headers={"Authorization": "Bearer opt-secret"},
    )
    start_worker()
    record = wait_for(lambda: record_of(broker, message.message_id))
    assert record.args == ["ann", placeholder("password")]
    assert record.kwargs == {"api_token": placeholder("token")}
    assert record.options["headers"] == {"Authorization": placeholder("authorization")}
    assert record.raw["args"] == ["ann", placeholder("password")]
    assert record.raw["kwargs"] == {"api_token": placeholder("token")}
    assert record.raw["options"]["headers"] == {"Authorization": placeholder("authorization")}
    assert record.redacted_fields == ["args.password", "kwargs.api_token", "options.headers.Authorization"]

    secrets = ("hunter2-positional", "tok-kwarg-secret", "opt-secret")
    store = dead_letters_of(broker).store
    stored = b"".join(stored_values(store.client, store.settings.namespace))
    assert b"login refused" in stored
    assert not any(secret.encode() in stored for secret in secrets)
    assert "Failed to process message" in caplog.text
    assert not any(secret in caplog.text for secret in secrets)


def test_a_secret_quoted_in_the_exception_is_scrubbed_from_every_copy(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker], caplog: pytest.LogCaptureFixture
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=1, min_backoff=10, retry_for=(ValueError,))
    def login(user: str, password: str = "") -> None:
        raise ValueError(f"login failed for {password}")

    caplog.set_level(logging.INFO)
    message = login.send_with_options(args=("ann",), kwargs={"password": "hunter2"})
    start_worker()
    record = wait_for(lambda: record_of(broker, message.message_id), 20)
    quoted = "login failed for [redacted:password]"
    assert record.error_message == quoted
    # The copies ClassifiedRetries carried on the retried message, in the record and its raw body.
    for options in (record.options, record.raw["options"]):
        assert options["error_message"] == quoted
        assert [entry["error_message"] for entry in options["attempt_history"]] == [quoted, quoted]
    assert record.redacted_fields == ["kwargs.password"]
    exports = []
    for fmt in ("json", "csv"):
        out = io.StringIO()
        dead_letters_of(broker).store.export(out, fmt)  # type: ignore[arg-type]
        exports.append(out.getvalue())
    assert "hunter2" not in "".join(exports)
    assert f"ValueError: {quoted}" in caplog.text  # the worker's traceback, scrubbed
    assert "hunter2" not in caplog.text


def test_a_card_number_is_redacted_whatever_its_argument_is_called(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker], caplog: pytest.LogCaptureFixture
) -> None:
    # As in examples/custom_classifier.py: the card travels as a positional argument named "card".
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def charge(order_id: str, card: str) -> None:
        raise PermanentError(f"card {card} declined for order {order_id}")

    message = charge.send("order-2", "4000 0000 0000 0002")
    start_worker()
    record = wait_for(lambda: record_of(broker, message.message_id))
    assert record.args == ["order-2", placeholder("card")]
    assert record.raw["args"] == ["order-2", placeholder("card")]
    assert record.redacted_fields == ["args.card"]
    assert record.error_message == "card [redacted:card] declined for order order-2"
    assert "Failed to process message charge('order-2', '[redacted:card]')" in caplog.text
    assert "4000 0000 0000 0002" not in caplog.text


def test_unknown_actor_is_recorded(broker: Broker, queue_name: str, start_worker: Callable[..., Worker]) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def known() -> None: ...

    ghost = Message(queue_name=queue_name, actor_name="ghost", args=(1,), kwargs={"password": "x-secret"}, options={})
    broker.enqueue(ghost)
    start_worker()
    record = wait_for(lambda: record_of(broker, ghost.message_id))
    assert record.reason == "unknown_actor"
    assert record.actor == "ghost"
    assert record.error_type == "dramatiq.errors.ActorNotFound"
    assert record.kwargs == {"password": placeholder("password")}


@pytest.mark.parametrize("broker_kind", ["rabbitmq"], indirect=True)
def test_undecodable_body_is_recorded_and_the_worker_goes_on(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def keep(x: int) -> None:
        done.append(x)

    body = b"\xff" + b"garbage " * 100
    keep.send(1)
    push_raw(settings, queue_name, body)
    keep.send(2)
    start_worker()
    wait_for(lambda: sorted(done) == [1, 2])
    store = dead_letters_of(broker).store
    records = wait_for(lambda: store.list(DeadLetterFilter(reason="undecodable")))
    assert len(records) == 1
    _check_undecodable(records[0], queue_name, body)
    broker.join(queue_name, timeout=10_000)
    assert xq_depth(broker, settings, queue_name) == 0


@pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)
def test_record_undecodable_hook_on_redis(broker: Broker, queue_name: str) -> None:
    # FairRedisBroker's consumer calls this hook; here it is called as that consumer would.
    body = b'{"not": "a message"' + b"x" * 400
    middleware = dead_letters_of(broker)
    middleware.record_undecodable(broker, queue_name, body, DecodeError("failed to decode", body, ValueError("bad")))
    middleware.record_undecodable(broker, queue_name, body, DecodeError("failed to decode", body, ValueError("bad")))
    records = middleware.store.list(DeadLetterFilter(reason="undecodable"))
    assert len(records) == 1
    _check_undecodable(records[0], queue_name, body)
    assert records[0].error_message == "bad"


def _check_undecodable(record: DeadLetter, queue_name: str, body: bytes) -> None:
    assert record.queue == queue_name
    assert record.actor is None
    assert record.raw == {
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "head_base64": base64.b64encode(body[:256]).decode(),
    }
    assert body.decode(errors="replace")[:300] not in (record.error_message or "")


def test_requeue_runs_the_job_again_and_removes_the_record(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    fixed: list[bool] = []
    runs: list[dict[str, object]] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def charge(order: int) -> None:
        if not fixed:
            raise RuntimeError("bug")
        runs.append(dict(dramatiq.middleware.CurrentMessage.get_current_message().options))

    broker.add_middleware(dramatiq.middleware.CurrentMessage())
    message = charge.send(5)
    start_worker()
    store = dead_letters_of(broker).store
    wait_for(lambda: store.get(message.message_id))
    broker.join(queue_name, timeout=10_000)

    dry = store.requeue(broker, [message.message_id], dry_run=True)
    assert [item.id for item in dry.requeued] == [message.message_id]
    assert store.get(message.message_id) is not None

    fixed.append(True)
    result = store.requeue(broker, filters=DeadLetterFilter(actor="charge"), priority="low")
    assert [item.priority_level for item in result.requeued] == ["LOW"]
    wait_for(lambda: runs)
    broker.join(queue_name, timeout=10_000)
    assert len(runs) == 1
    assert runs[0]["requeued_from"] == message.message_id
    assert Priority.parse(runs[0]["priority_level"]) is Priority.LOW
    assert store.get(message.message_id) is None
    assert xq_depth(broker, settings, queue_name) == 0


def test_requeue_of_redacted_records_needs_allow_redacted(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    seen: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def connect(password: str) -> None:
        if seen:
            return
        seen.append(password)
        raise RuntimeError("refused")

    message = connect.send("hunter2")
    start_worker()
    store = dead_letters_of(broker).store
    wait_for(lambda: store.get(message.message_id))
    with pytest.raises(RedactedRecords, match=r"args\.password"):
        store.requeue(broker, [message.message_id])
    assert store.get(message.message_id) is not None
    store.requeue(broker, [message.message_id], allow_redacted=True)
    wait_for(lambda: store.get(message.message_id) is None)
    broker.join(queue_name, timeout=10_000)


def test_record_goes_to_the_spool_while_the_store_is_down(
    broker: Broker, settings: Settings, queue_name: str, short_tmp: Path, start_worker: Callable[..., Worker]
) -> None:
    middleware = dead_letters_of(broker)
    down = settings.model_copy(update={"state_url": f"redis://127.0.0.1:{free_port()}/0"})
    middleware.store = DeadLetterStore(down)

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def flaky() -> None:
        raise RuntimeError("down")

    message = flaky.send()
    start_worker()
    wait_for(middleware.store.spool.pending)
    broker.join(queue_name, timeout=10_000)
    if isinstance(broker, RabbitmqBroker):
        assert xq_depth(broker, settings, queue_name) == 0

    back = DeadLetterStore(settings)
    assert back.get(message.message_id) is None
    assert back.replay_spool() == 1
    record = back.get(message.message_id)
    assert record is not None
    assert record.reason == "retries_exhausted"


def test_requeue_paces_messages_at_the_given_rate(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    fixed: list[bool] = []
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def ship(n: int) -> None:
        if not fixed:
            raise TimeoutError("carrier timed out")
        done.append(n)

    sent = [ship.send(n) for n in range(3)]
    start_worker()
    store = dead_letters_of(broker).store
    wait_for(lambda: all(store.get(m.message_id) for m in sent))
    fixed.append(True)
    pauses: list[float] = []
    result = store.requeue(broker, filters=DeadLetterFilter(actor="ship"), rate=4, sleep=pauses.append)
    assert len(result.requeued) == 3
    assert pauses == [0.25, 0.25]
    wait_for(lambda: sorted(done) == [0, 1, 2])
