"""Every verb's errors: one line on stderr naming the flag or the value, exit 2 for usage and 1 for
a failed operation, never a traceback (in process, and some through the real command)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from dramatiq_fairway.cli import main

from ..conftest import ON_CLUSTER, REDIS_URL
from ..support.helpers import free_port

USAGE, FAILED = 2, 1

# (argv, expected exit code, text the one line must contain: the flag or the value)
BAD_INVOCATIONS: list[tuple[list[str], int, str]] = [
    ([], USAGE, "command"),
    (["launch"], USAGE, "'launch'"),
    (["check", "--verbose"], USAGE, "--verbose"),
    (["queues", "--json", "--depth"], USAGE, "--depth"),
    (["workers", "extra"], USAGE, "extra"),
    (["pause"], USAGE, "queue"),
    (["resume"], USAGE, "queue"),
    (["pause", "a", "b"], USAGE, "b"),
    (["dlq"], USAGE, "verb"),
    (["dlq", "browse"], USAGE, "'browse'"),
    (["dlq", "list", "--since", "soon"], USAGE, "--since: 'soon'"),
    (["dlq", "list", "--since", "1000000d"], USAGE, "--since: '1000000d'"),
    (["dlq", "list", "--since", "99999999999999999999999999d"], USAGE, "--since"),
    (["dlq", "list", "--limit", "0"], USAGE, "--limit: '0'"),
    (["dlq", "list", "--limit", "many"], USAGE, "--limit: 'many'"),
    (["dlq", "list", "--reason", "bored"], USAGE, "'bored'"),
    (["dlq", "show"], USAGE, "id"),
    (["dlq", "show", "nope"], FAILED, "'nope'"),
    (["dlq", "stats", "--bucket", "0s"], USAGE, "--bucket: '0s'"),
    (["dlq", "stats", "--bucket", "0.5s"], USAGE, "--bucket: '0.5s'"),
    (["dlq", "stats", "--bucket", "1000000d"], USAGE, "--bucket: '1000000d'"),
    (["dlq", "stats", "--by", "colour"], USAGE, "'colour'"),
    (["dlq", "stats", "--since", "-1h"], USAGE, "--since"),
    (["dlq", "export"], USAGE, "--format"),
    (["dlq", "export", "--format", "xml"], USAGE, "'xml'"),
    (["dlq", "export", "--format", "csv", "-o", "/nonexistent-dir/out.csv"], FAILED, "/nonexistent-dir/out.csv"),
    (["dlq", "requeue"], USAGE, "ID"),
    (["dlq", "requeue", "--queue", "q", "--priority", "urgent"], USAGE, "'urgent'"),
    (["dlq", "requeue", "--queue", "q", "--rate", "0"], USAGE, "--rate: '0'"),
    (["dlq", "requeue", "--queue", "q", "--rate", "fast"], USAGE, "--rate: 'fast'"),
    (["dlq", "purge", "--older-than", "1000000d", "--yes"], USAGE, "--older-than: '1000000d'"),
    (["dlq", "purge", "--older-than", "later", "--yes"], USAGE, "--older-than: 'later'"),
    (["dlq", "purge", "--yes"], USAGE, "ID"),
    (["dlq", "purge", "--queue", "q"], FAILED, "--yes"),
    (["breakers"], USAGE, "verb"),
    (["breakers", "open"], USAGE, "KEY"),
    (["breakers", "explode", "api"], USAGE, "'explode'"),
    (["breakers", "close", "no-such-breaker"], FAILED, "'no-such-breaker'"),
    (["breakers", "reset", "no-such-breaker"], FAILED, "'no-such-breaker'"),
    (["jobs"], USAGE, "verb"),
    (["jobs", "show"], USAGE, "id"),
    (["jobs", "kill", "x"], USAGE, "'kill'"),
    (["jobs", "show", "no-such-job"], FAILED, "'no-such-job'"),
    (["jobs", "cancel", "no-such-job"], FAILED, "'no-such-job'"),
    (["limits"], USAGE, "verb"),
    (["limits", "set"], USAGE, "TENANT"),
    (["limits", "set", "acme"], USAGE, "--max-concurrency"),
    (["limits", "set", "acme", "--rate", "fast"], USAGE, "--rate: invalid float value: 'fast'"),
    (["limits", "set", "acme", "--max-concurrency", "many"], USAGE, "--max-concurrency: invalid int value: 'many'"),
    (["limits", "set", "acme", "--max-concurrency", "-3"], USAGE, "--max-concurrency: -3"),
    (["limits", "set", "acme", "--rate", "0"], USAGE, "--rate: 0"),
    (["limits", "clear"], USAGE, "TENANT"),
    (["stats", "--since", "soon"], USAGE, "--since: 'soon'"),
    (["stats", "--since", "30s"], USAGE, "--since: '30s'"),
    (["stats", "--since", "2d"], USAGE, "--since: '2d'"),
    (["stats", "--by", "colour"], USAGE, "--by: invalid choice: 'colour'"),
    (["dashboard", "--port", "http"], USAGE, "--port: 'http'"),
    (["dashboard", "--port", "70000"], USAGE, "--port: '70000'"),
    (["dashboard", "--json"], USAGE, "--json"),
    (["embedded"], USAGE, "verb"),
    (["embedded", "start"], USAGE, "'start'"),
    (["demo", "--jobs", "0"], USAGE, "--jobs: '0'"),
    (["demo", "--jobs", "lots"], USAGE, "--jobs: 'lots'"),
    (["demo", "--jobs", "1"], USAGE, "--jobs: 1"),
    (["demo", "--threads", "0"], USAGE, "--threads: '0'"),
    (["migrate", "--dryrun"], USAGE, "--dryrun"),
    (["migrate", "--stock-namespace", ""], USAGE, "--stock-namespace: ''"),
    (["migrate", "--stock-namespace", "dram*"], USAGE, "--stock-namespace: 'dram*'"),
    # On a cluster, migrate refuses before it looks for the queue (stock Dramatiq is never there).
    (["migrate", "no_such_queue"], FAILED, "needs one Redis server" if ON_CLUSTER else "'no_such_queue'"),
]


@pytest.fixture
def cli_env(namespace: str, short_tmp: Path, state_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared Redis as broker and state store, so that no embedded Redis is started."""
    monkeypatch.setenv("FAIRWAY_BROKER", "redis")
    monkeypatch.setenv("FAIRWAY_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("FAIRWAY_STATE_URL", REDIS_URL)
    monkeypatch.setenv("FAIRWAY_NAMESPACE", namespace)
    monkeypatch.setenv("FAIRWAY_DATA_DIR", str(short_tmp))


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse exits from inside parse_args
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, expected_code: int, names: str) -> None:
    assert "Traceback" not in out + err
    assert code == expected_code, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert names in lines[0]


def test_there_are_at_least_forty_bad_invocations_over_every_verb() -> None:
    assert len(BAD_INVOCATIONS) >= 40
    verbs = {argv[0] for argv, _, _ in BAD_INVOCATIONS if argv}
    assert verbs >= {"check", "queues", "workers", "pause", "resume", "dlq", "breakers", "jobs", "limits"}
    assert verbs >= {"dashboard", "embedded", "demo", "migrate"}
    dlq_verbs = {argv[1] for argv, _, _ in BAD_INVOCATIONS if argv[:1] == ["dlq"] and len(argv) > 1}
    assert dlq_verbs >= {"list", "show", "stats", "export", "requeue", "purge"}


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(
    ("argv", "expected_code", "names"), BAD_INVOCATIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else str(v)
)
def test_a_bad_invocation_is_one_line_and_its_exit_code(
    argv: list[str], expected_code: int, names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_in_process(argv, capsys)
    assert_one_line_error(code, out, err, expected_code, names)


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize("argv", [["dlq", "show", "x"], ["jobs", "show", "x"], ["breakers", "list"], ["workers"]])
def test_an_unreachable_state_store_is_one_line_and_exit_1(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAIRWAY_STATE_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, out, err = run_in_process(argv, capsys)
    assert_one_line_error(code, out, err, FAILED, "ConnectionError")


@pytest.mark.usefixtures("cli_env")
def test_a_bad_setting_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAIRWAY_BROKER", "kafka")
    code, out, err = run_in_process(["workers"], capsys)
    assert_one_line_error(code, out, err, FAILED, "kafka")


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(
    ("argv", "expected_code", "names"),
    [
        (["dlq", "stats", "--bucket", "0s"], USAGE, "--bucket: '0s'"),
        (["dlq", "list", "--since", "1000000d"], USAGE, "--since: '1000000d'"),
        (["dlq", "purge", "--older-than", "1000000d", "--yes"], USAGE, "--older-than: '1000000d'"),
        (["dlq", "show", "nope"], FAILED, "'nope'"),
        (["dashboard", "--json"], USAGE, "--json"),
    ],
)
def test_the_real_command_prints_no_traceback(argv: list[str], expected_code: int, names: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dramatiq_fairway.cli", *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert_one_line_error(done.returncode, done.stdout, done.stderr, expected_code, names)
