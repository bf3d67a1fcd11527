"""``fairway check``: settings and connectivity, one-line failures, no secrets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dramatiq_fairway.cli import main

from ..conftest import REDIS_MODE
from ..support.helpers import free_port


def run_fairway(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dramatiq_fairway.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_check_json_reports_both_servers_reachable(kind: str) -> None:
    result = run_fairway(
        "check", "--json", env={"FAIRWAY_BROKER": kind, "FAIRWAY_STATE_URL": "redis://127.0.0.1:6379/0"}
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["broker"]["kind"] == kind
    assert report["broker"]["reachable"] is True
    assert report["broker"]["version"]
    assert report["state_store"]["reachable"] is True
    assert report["state_store"]["mode"] == "single"
    assert isinstance(report["state_store"]["replicas"], int)
    assert report["broker"]["mode"] == (REDIS_MODE if kind == "redis" else None)
    assert report["settings"]["broker"] == kind
    assert "guest:guest" not in result.stdout


@pytest.mark.parametrize(
    ("kind", "variable", "scheme"),
    [
        ("redis", "FAIRWAY_REDIS_URL", "redis://:sekrit@127.0.0.1:{port}/0"),
        ("rabbitmq", "FAIRWAY_RABBITMQ_URL", "amqp://guest:sekrit@127.0.0.1:{port}/%2F"),
    ],
)
def test_check_wrong_port_exits_1_with_one_line(kind: str, variable: str, scheme: str) -> None:
    url = scheme.format(port=free_port())
    result = run_fairway(
        "check", "--json", env={"FAIRWAY_BROKER": kind, variable: url, "FAIRWAY_STATE_URL": "redis://127.0.0.1:6379/0"}
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "did not answer" in lines[0]
    assert f"broker ({kind})" in lines[0]
    assert "sekrit" not in result.stdout + result.stderr
    assert json.loads(result.stdout)["ok"] is False


def test_state_store_down_is_reported(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_BROKER", "redis")
    monkeypatch.setenv("FAIRWAY_STATE_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(["check"]) == 1
    captured = capsys.readouterr()
    assert "state store (redis)" in captured.err
    assert "when the state store is down" in captured.out


def test_rabbitmq_with_embedded_state_store_warns(short_tmp: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_BROKER", "rabbitmq")
    monkeypatch.setenv("FAIRWAY_DATA_DIR", str(short_tmp))
    result = run_fairway("check", "--json", env={"FAIRWAY_BROKER": "rabbitmq", "FAIRWAY_DATA_DIR": str(short_tmp)})
    try:
        report = json.loads(result.stdout)
        assert report["state_store"]["kind"] == "embedded"
        assert any("per host" in warning for warning in report["warnings"])
    finally:
        assert main(["embedded", "stop", "--json"]) == 0


def test_config_error_is_one_line_without_traceback() -> None:
    result = run_fairway("check", env={"FAIRWAY_BROKER": "kafka"})
    assert result.returncode == 1
    assert result.stderr.strip() == "ConfigError: FAIRWAY_BROKER: 'kafka' is not one of redis, rabbitmq, embedded"
