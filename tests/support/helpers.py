"""Helpers shared by the tests: polling with a deadline, the real `dramatiq` command, free ports."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import dramatiq
import pytest
import redis.connection
from dramatiq import Broker, Worker

from dramatiq_fairway.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(ports: range, offsets: Iterable[int]) -> int:
    """The first port of a block of 10 in ``ports`` whose ports ``base + offset`` are all free,
    starting at a block chosen by pid so that two test processes rarely try the same one."""
    wanted = list(offsets)
    blocks = list(range(ports.start, ports.stop - 9, 10))
    start = os.getpid() % len(blocks)
    for base in blocks[start:] + blocks[:start]:
        if all(_port_free(base + offset) for offset in wanted):
            return base
    raise RuntimeError(f"no free block of 10 ports in {ports}")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind (Redis, Sentinel and RabbitMQ set SO_REUSEADDR): a port whose last
        # connections wait out TIME_WAIT is free to them, and a rerun within a minute needs it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``FAIRWAY_*`` environment that makes another process load ``settings``."""
    env = {
        "FAIRWAY_BROKER": settings.broker,
        "FAIRWAY_REDIS_URL": settings.redis_url,
        "FAIRWAY_RABBITMQ_URL": settings.rabbitmq_url,
        "FAIRWAY_DATA_DIR": str(settings.data_dir),
        "FAIRWAY_NAMESPACE": settings.namespace,
        "FAIRWAY_RABBITMQ__QUEUE_TYPE": settings.rabbitmq.queue_type,
    }
    if settings.state_url:
        env["FAIRWAY_STATE_URL"] = settings.state_url
    return env


@contextmanager
def dramatiq_command(
    module: str,
    env: Mapping[str, str],
    *,
    processes: int = 1,
    threads: int = 2,
    queues: list[str] | None = None,
    log_file: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the real ``dramatiq`` command on ``module`` from the repository root; stop it at the end."""
    command = [sys.executable, "-m", "dramatiq", module, "--processes", str(processes), "--threads", str(threads)]
    if queues:
        command += ["--queues", *queues]
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    output = open(log_file, "wb") if log_file else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log_file:
            output.close()  # type: ignore[union-attr]


def run_jobs(broker: Broker, queue_name: str, values: list[Any]) -> list[Any]:
    """Send one job per value through ``broker``, run them on an in-process worker, return what ran."""
    done: list[Any] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def record(value: Any) -> None:
        done.append(value)

    for value in values:
        record.send(value)
    worker = Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join(queue_name, timeout=15_000)
    finally:
        worker.stop()
    return done


def loud_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Lines of Dramatiq's and fairway's loggers at WARNING or above, or carrying a traceback."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("dramatiq") and (record.levelno >= logging.WARNING or record.exc_info)
    ]


def info_lines(caplog: pytest.LogCaptureFixture, containing: str) -> list[str]:
    """INFO lines of Dramatiq's and fairway's loggers that contain ``containing``."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("dramatiq") and record.levelno == logging.INFO and containing in record.getMessage()
    ]


def redis_writes(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every write redis-py makes on any connection from now on (one entry per packed write)."""
    sent: list[object] = []
    send_packed = redis.connection.AbstractConnection.send_packed_command

    def counting(connection: redis.connection.AbstractConnection, command: object, check_health: bool = True) -> None:
        sent.append(command)
        send_packed(connection, command, check_health)  # type: ignore[arg-type]

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return sent
