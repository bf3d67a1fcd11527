"""A secret scan, end to end on real Redis and real RabbitMQ: a job whose exception quotes its
password and whose positional argument is a card number fails, is retried, and is dead-lettered;
neither secret is then anywhere fairway wrote: the state store, the exports, the worker's log,
``fairway jobs show`` and the dashboard."""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections.abc import Callable, Iterator

import dramatiq
import pytest
import redis
from dramatiq import Broker, Worker

from dramatiq_fairway.cli import jobs as jobs_cli
from dramatiq_fairway.middlewares.json_logs import JsonLogFormatter
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.dead_letters import DeadLetterStore
from dramatiq_fairway.store.status import JobState, JobStatusStore

from ..support.dashboard_support import client_for
from ..support.helpers import settings_env, wait_for

PASSWORD = "hunter2"
CARD = "4000000000000002"  # a test Visa number: 16 digits that pass Luhn
SECRETS = (PASSWORD, CARD)


def every_key_and_value(client: redis.Redis, namespace: str) -> Iterator[bytes]:
    """The name and every member, field and value of every key of the namespace (queues too)."""
    readers: dict[bytes, Callable[[bytes], list[bytes]]] = {
        b"string": lambda key: [client.get(key) or b""],
        b"hash": lambda key: [item for pair in client.hgetall(key).items() for item in pair],
        b"list": lambda key: client.lrange(key, 0, -1),
        b"set": lambda key: list(client.smembers(key)),
        b"zset": lambda key: client.zrange(key, 0, -1),
        b"stream": lambda key: [item for _, entry in client.xrange(key) for pair in entry.items() for item in pair],
    }
    for pattern in (f"{namespace}:*", f"{{{namespace}:*"):
        for key in client.scan_iter(match=pattern):
            yield key
            yield from readers[client.type(key)](key)


def assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in {where}"


def test_no_secret_survives_a_failing_job(  # noqa: PLR0917 (fixtures)
    broker: Broker,
    settings: Settings,
    queue_name: str,
    start_worker: Callable[..., Worker],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # retry_for: a ValueError is permanent by default; this one is retried, so it travels in the options.
    @dramatiq.actor(
        broker=broker, queue_name=queue_name, max_retries=1, min_backoff=10, max_backoff=20, retry_for=(ValueError,)
    )
    def charge(order_id: str, card: str, password: str = "") -> None:
        raise ValueError(f"login failed for {password} paying {order_id} with {card}")

    caplog.set_level(logging.DEBUG)
    message = charge.send_with_options(args=("order-9", CARD), kwargs={"password": PASSWORD})
    start_worker()
    store = DeadLetterStore(settings)
    record = wait_for(lambda: store.get(message.message_id), 20)
    jobs = JobStatusStore.from_settings(settings)
    wait_for(lambda: (job := jobs.get(message.message_id)) is not None and job.state is JobState.DEAD_LETTER, 20)
    broker.join(queue_name, timeout=10_000)

    # Redacted, with the rule that fired named, and retried once on the way.
    assert record.error_message == "login failed for [redacted:password] paying order-9 with [redacted:card]"
    assert record.args == ["order-9", "[redacted:card]"]
    assert record.kwargs == {"password": "[redacted:password]"}
    assert record.redacted_fields == ["args.card", "kwargs.password"]
    history = record.options["attempt_history"]
    assert len(history) == 2
    assert "[redacted:password]" in history[0]["error_message"]
    assert "ValueError: login failed for [redacted:password]" in (record.traceback or "")

    stored = b"\n".join(every_key_and_value(store.client, settings.namespace))
    assert b"order-9" in stored  # the scan does read the record
    assert_clean(stored.decode(errors="replace"), "the state store")

    for fmt in ("json", "csv"):
        out = io.StringIO()
        assert store.export(out, fmt) == 1  # type: ignore[arg-type]
        assert "order-9" in out.getvalue()
        assert_clean(out.getvalue(), f"the {fmt} export")

    assert "Failed to process message" in caplog.text
    assert "[redacted:card]" in caplog.text
    assert_clean(caplog.text, "the worker's log")
    json_lines = "\n".join(JsonLogFormatter().format(entry) for entry in caplog.records)
    assert '"exception"' in json_lines  # the failure's traceback is kept, scrubbed
    assert_clean(json_lines, "the worker's JSON log")

    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser(prog="fairway")
    jobs_cli.register(parser.add_subparsers(dest="command", required=True))
    for argv in (["jobs", "show", message.message_id], ["jobs", "show", message.message_id, "--json"]):
        capsys.readouterr()
        args = parser.parse_args(argv)
        args.func(args)
        shown = capsys.readouterr().out
        assert "DEAD_LETTER" in shown
        assert_clean(shown, " ".join(argv))
    assert json.loads(shown)["state"] == "DEAD_LETTER"

    client = client_for(settings, broker)
    pages = ["/", "/tenants", "/queues", "/breakers", "/dead-letters", f"/dead-letters/{record.id}"]
    pages += [f"/jobs/{message.message_id}", f"/dead-letters?actor=charge&queue={queue_name}"]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        assert_clean(response.text, f"the dashboard's {page}")
    assert "[redacted:card]" in client.get(f"/dead-letters/{record.id}").text
