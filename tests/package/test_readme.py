"""README's commands work when copied in order from a fresh clone, and CI runs the README's test command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ..support.helpers import ROOT

README = (ROOT / "README.md").read_text()
# What a fresh Debian machine has before the first command (which makes .venv), and what a shell offers.
SYSTEM_COMMANDS = {"python3", "bash", "kill", "wait", "cd"}
# Console scripts the venv has after `pip install -e ".[...]"`.
VENV_SCRIPTS = {"fairway", "dramatiq", "periodiq", "pip", "python", "pytest", "tox"}


def shell_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL)


def commands(block: str) -> list[list[str]]:
    """Each simple command of a block as words, with leading ``VAR=value`` assignments dropped."""
    found = []
    for line in block.splitlines():
        command = line.split("  #", 1)[0].strip()
        for part in re.split(r"&&|\|\||[;|&]", command):
            words = shlex.split(part)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words.pop(0)
            if words:
                found.append(words)
    return found


def test_every_readme_command_runs_from_the_clone_without_an_activated_venv() -> None:
    blocks = shell_blocks()
    assert blocks[0].startswith("python3 -m venv .venv"), "the first command must make the venv"
    for block in blocks:
        for words in commands(block):
            program = words[0]
            if program.startswith(".venv/bin/"):
                assert program.removeprefix(".venv/bin/") in VENV_SCRIPTS, f"{program}: not installed in the venv"
            else:
                assert program in SYSTEM_COMMANDS, f"`{' '.join(words)}` needs a program a fresh clone lacks"
            for word in words[1:]:
                if word.endswith((".py", ".sh")) and not word.startswith("-"):
                    assert (ROOT / word).exists(), f"{word}: no such file in the repository"


def test_ci_only_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = README.split("<!-- test-command -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].strip()
    assert test_command == "bash scripts/test-all.sh"
    for set_up in ("apt-get", "redis-server", "rabbitmq-server", "pip install", "venv"):
        assert set_up not in ci, f".ci/run does set-up of its own ({set_up}); scripts/test-all.sh must do it"


def test_the_test_script_installs_every_tool_the_tests_drive() -> None:
    script = (ROOT / "scripts" / "test-all.sh").read_text()
    for package in ("redis-server", "rabbitmq-server", "chromium", "prometheus"):
        assert re.search(rf"packages\+=\({package}\)", script), f"{package} is not installed when missing"


def test_readme_documents_the_namespace_and_metrics_settings() -> None:
    for setting in ("FAIRWAY_NAMESPACE", "FAIRWAY_METRICS__PORT", "__HOST"):
        assert setting in README


def test_a_missing_tool_is_a_failure_never_a_skip() -> None:
    for path in Path(ROOT / "tests").rglob("test_*.py"):
        if path.name == Path(__file__).name:
            continue
        assert "pytest.skip(" not in path.read_text(), f"{path.name} skips; install the tool or fail"
