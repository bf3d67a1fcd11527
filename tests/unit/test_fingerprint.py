"""Fingerprints: one per bug, the same across processes and runs, different for different bugs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from dramatiq_fairway.failures.fingerprint import fingerprint, innermost_user_frame, normalise_message

BUGGY = textwrap.dedent(
    """
    import sys, traceback
    from dramatiq_fairway.failures.fingerprint import fingerprint

    def lookup(user_id):
        raise KeyError(f"user {user_id} not found in 'shard-{user_id}' at 0x{user_id:08x}")

    def other(user_id):
        raise ValueError(f"negative balance {user_id}")

    try:
        (other if sys.argv[1] == "other" else lookup)(int(sys.argv[2]))
    except Exception as error:
        print(fingerprint(type(error).__qualname__, str(error), traceback.format_exc()))
    """
)


def run_bug(tmp: Path, which: str, value: int) -> str:
    script = tmp / "buggy.py"
    script.write_text(BUGGY)
    result = subprocess.run(
        [sys.executable, str(script), which, str(value)], capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout.strip()


def test_same_bug_in_three_processes_has_one_fingerprint(short_tmp: Path) -> None:
    prints = {run_bug(short_tmp, "lookup", value) for value in (7, 42, 123456)}
    assert len(prints) == 1
    assert len(next(iter(prints))) == 16


def test_different_bugs_have_different_fingerprints(short_tmp: Path) -> None:
    assert run_bug(short_tmp, "lookup", 7) != run_bug(short_tmp, "other", 7)


def test_message_normalisation_replaces_variable_parts() -> None:
    message = "user 42 'ann' \"x\" 550e8400-e29b-41d4-a716-446655440000 at 0xdeadbeef sha 9f86d081884c7d65 took 1.5s"
    assert normalise_message(message) == "user <n> <str> <str> <uuid> at <hex> sha <hex> took <n>s"


def test_innermost_frame_skips_library_code() -> None:
    trace = textwrap.dedent(
        f"""\
        Traceback (most recent call last):
          File "/srv/app/jobs/tasks.py", line 10, in fetch
            client.get(url)
          File "/srv/app/jobs/client.py", line 5, in get
            return httpx.get(url)
          File "{sys.prefix}/lib/python3.11/site-packages/httpx/_api.py", line 99, in get
            raise ConnectError()
        httpx.ConnectError: boom
        """
    )
    assert innermost_user_frame(trace) == "jobs/client.py:get"


def test_line_numbers_do_not_change_the_fingerprint() -> None:
    first = 'Traceback:\n  File "/srv/app/jobs/tasks.py", line 10, in fetch\n'
    moved = 'Traceback:\n  File "/srv/app/jobs/tasks.py", line 31, in fetch\n'
    assert fingerprint("KeyError", "x 1", first) == fingerprint("KeyError", "x 2", moved)
    assert fingerprint("KeyError", "x", first) != fingerprint("IndexError", "x", first)
