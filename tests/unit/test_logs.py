"""JSON log lines without a server: the fields inside and outside a job, and a bad format named.
The real ``dramatiq`` command's lines are in tests/middlewares/test_logs.py."""

from __future__ import annotations

import json
import logging

import pytest
from dramatiq import Message

from dramatiq_fairway.middlewares.json_logs import JsonLogFormatter, current_job, job_fields


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("app", logging.WARNING, __file__, 1, message, (), None)


def test_a_line_outside_a_job_has_no_job_fields() -> None:
    line = json.loads(JsonLogFormatter().format(_record("plain")))
    assert line["message"] == "plain"
    assert line["level"] == "WARNING"
    assert "message_id" not in line


def test_a_line_inside_a_job_names_the_job() -> None:
    message = Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={"tenant": "acme", "retries": 2})
    token = current_job.set(job_fields(message))
    try:
        line = json.loads(JsonLogFormatter().format(_record("inside")))
    finally:
        current_job.reset(token)
    assert {k: line[k] for k in ("message_id", "actor", "queue", "tenant", "attempt")} == {
        "message_id": message.message_id,
        "actor": "a",
        "queue": "q",
        "tenant": "acme",
        "attempt": 3,
    }


def test_a_bad_log_format_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from dramatiq_fairway.errors import ConfigError
    from dramatiq_fairway.settings import load_settings

    monkeypatch.setenv("FAIRWAY_LOGS__FORMAT", "xml")
    with pytest.raises(ConfigError, match="FAIRWAY_LOGS__FORMAT"):
        load_settings()
