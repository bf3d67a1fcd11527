"""JSON log lines (FAIRWAY_LOGS__FORMAT=json) carrying the job's id, actor, queue, tenant and attempt."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Broker, Worker

from dramatiq_fairway.actors import fl
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.setup import setup

from ..support.helpers import dramatiq_command, loud_lines, settings_env, wait_for


def test_shipped_actors_return_values_without_a_warning_while_other_actors_still_warn(
    broker: Broker,
    queue_name: str,
    short_tmp: Path,
    start_worker: Callable[..., Worker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    # The demo's actor, declared on the test's broker and queue as the demo's worker has it.
    shipped = dramatiq.actor(fl.sync_client_data.fn, broker=broker, queue_name=queue_name, actor_name="fl.sync_test")

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def users_own() -> int:
        return 1

    for n in range(3):
        shipped.send(f"client-{n}", n, str(short_tmp))
    users_own.send()
    start_worker()
    wait_for(lambda: len(list(short_tmp.iterdir())) >= 3 and loud_lines(caplog))
    broker.join(queue_name, timeout=15_000)
    [warning] = loud_lines(caplog)
    assert warning.startswith("Actor 'users_own' returned a value that is not None")


@pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)
def test_the_dramatiq_command_writes_json_lines_for_jobs(settings: Settings, queue_name: str, short_tmp: Path) -> None:
    env = {**settings_env(settings), "FAIRWAY_TEST_QUEUE": queue_name, "FAIRWAY_LOGS__FORMAT": "json"}
    log_file = short_tmp / "worker.log"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        from ..support import logs_app

        producer = setup(settings)
        logs_app.chatty.broker = producer
        message = logs_app.chatty.send_with_options(args=("hello",), tenant="acme")
    with dramatiq_command("tests.support.logs_app", env, log_file=log_file):
        line = wait_for(lambda: _line_saying(log_file, "said hello"), timeout=30)
    assert line["message_id"] == message.message_id
    assert (line["actor"], line["queue"], line["tenant"], line["attempt"]) == ("chatty", queue_name, "acme", 1)
    producer.close()


def _line_saying(log_file: Path, text: str) -> dict[str, object] | None:
    for raw in log_file.read_text(errors="replace").splitlines():
        start = raw.find("{")
        if start >= 0 and text in raw:
            return dict(json.loads(raw[start:]))
    return None
