"""Support for the chaos tests: the worker app the real ``dramatiq`` command runs, a throwaway Redis
that can be SIGKILLed and started again, worker commands a test can kill and restart as a supervisor
would, and the log of every job run.

The worker app is ``dramatiq tests.support.chaos_support:worker_app``: ``setup()`` from the ``FAIRWAY_*``
environment, then the chaos actors on the queue named by ``CHAOS_QUEUE``. Every run of a job that
finished is appended to a list in the *shared* Redis (``{namespace}:chaos:runs``, one ``pid:job``
entry per run), which no chaos test ever breaks, so the count survives every fault injected.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import pika
import redis
from dramatiq import Actor, Broker, Message
from dramatiq.common import dq_name, xq_name

from dramatiq_fairway import setup
from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.errors import PermanentError
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import Settings, load_settings

from ..conftest import redis_for_tests
from .helpers import dramatiq_command, free_port, settings_env, wait_for
from .tls import SYSTEM_REDIS

QUEUE_ENV = "CHAOS_QUEUE"
WORKER_APP = "tests.support.chaos_support:worker_app"
JOB = "chaos_job"
FAILING_JOB = "chaos_fail"
READY_LINE = "Worker process is ready for action."


def worker_app() -> None:
    """Called by ``dramatiq tests.support.chaos_support:worker_app`` in each worker process."""
    settings = load_settings()
    declare_actors(setup(settings), os.environ[QUEUE_ENV], settings.namespace)


def declare_actors(broker: Broker, queue_name: str, namespace: str) -> tuple[Actor[Any, Any], Actor[Any, Any]]:
    """The chaos actors on ``broker``: the worker runs them, a test's producer sends with them."""
    runs = RunLog(namespace)

    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name=JOB, max_retries=3)
    def chaos_job(job_id: int, seconds: float = 0.0, payload: str = "") -> None:
        del payload  # only there to make a message large
        time.sleep(seconds)
        runs.record(job_id)

    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name=FAILING_JOB, max_retries=0)
    def chaos_fail(job_id: int) -> None:
        raise PermanentError(f"chaos job {job_id} fails on purpose")

    return chaos_job, chaos_fail


class RunLog:
    """Every finished run of a chaos job, as ``pid:job_id`` entries of a list in the shared Redis."""

    def __init__(self, namespace: str) -> None:
        self.key = f"{namespace}:chaos:runs"
        self.client = redis_for_tests()

    def record(self, job_id: int) -> None:
        self.client.rpush(self.key, f"{os.getpid()}:{job_id}")

    def runs(self) -> list[tuple[int, int]]:
        """(pid, job id) of every run so far, in the order they finished."""
        entries = (item.decode().split(":") for item in self.client.lrange(self.key, 0, -1))
        return [(int(pid), int(job)) for pid, job in entries]

    def counts(self) -> Counter[int]:
        return Counter(job for _pid, job in self.runs())

    def size(self) -> int:
        return int(self.client.llen(self.key))

    def all_done(self, jobs: range) -> bool:
        """Whether every job of ``jobs`` finished at least once (cheap check first)."""
        return self.size() >= len(jobs) and set(jobs) <= set(self.counts())

    def delete(self) -> None:
        self.client.delete(self.key)


def chaos_env(settings: Settings, queue_name: str) -> dict[str, str]:
    """The environment of a chaos worker command: the settings, the queue, an exporter on any free port."""
    return {**settings_env(settings), QUEUE_ENV: queue_name, "FAIRWAY_METRICS__PORT": "0"}


def log_tail(path: Path, lines: int = 40) -> str:
    """The end of a worker log, for assertion messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"


@dataclass
class WorkerCommand:
    """One ``dramatiq -p 1`` command that a test can kill and restart, as a supervisor would."""

    env: dict[str, str]
    log_dir: Path
    name: str
    threads: int
    stack: ExitStack = field(default_factory=ExitStack)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    def start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        self.process = self.stack.enter_context(
            dramatiq_command(WORKER_APP, self.env, processes=1, threads=self.threads, log_file=self.log_file)
        )
        return self.process

    def worker_pid(self, timeout: float = 60) -> int:
        """The pid of the worker process (the master's child that runs jobs, not the exporter fork)."""
        assert self.process is not None
        wait_for(lambda: READY_LINE in self.log_file.read_text(errors="replace"), timeout=timeout)
        log = self.log_file.read_text(errors="replace")
        for line in log.splitlines():
            if READY_LINE in line:
                return int(line.split("[PID ")[1].split("]")[0])
        raise AssertionError(f"no ready worker in {self.log_file}")

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def close(self) -> None:
        self.stack.close()


@contextmanager
def worker_commands(env: dict[str, str], log_dir: Path, count: int, threads: int) -> Iterator[list[WorkerCommand]]:
    """``count`` independent worker commands, all stopped (SIGTERM, then SIGKILL) at the end."""
    commands = [WorkerCommand(env, log_dir, f"worker{n}", threads) for n in range(count)]
    try:
        for command in commands:
            command.start()
        yield commands
    finally:
        for command in commands:
            command.close()


class RedisServer:
    """A throwaway Debian redis-server on its own loopback port, AOF fsynced at every write.

    ``kill()`` SIGKILLs it (no shutdown save); ``start()`` starts it again on the same port and
    directory, so it reloads its append-only file.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            SYSTEM_REDIS,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory), "--save", ""),
            *("--appendonly", "yes", "--appendfsync", "always"),
        ]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 (kept open by the server process)
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            wait_for(lambda: _answers(client), timeout=30)
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def _answers(client: redis.Redis) -> bool:
    try:
        # A server still loading its AOF answers LOADING errors, which are ResponseErrors.
        return bool(client.ping())
    except (redis.ConnectionError, redis.ResponseError):
        return False


@contextmanager
def throwaway_redis(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def publish_raw(settings: Settings, queue_name: str, body: bytes) -> None:
    """Put ``body`` on a declared RabbitMQ queue as it is, past every enqueue check."""
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        # mandatory: a queue not declared yet would drop the body silently.
        channel.basic_publish(
            exchange="",
            routing_key=queue_name,
            body=body,
            properties=pika.BasicProperties(delivery_mode=2),
            mandatory=True,
        )
    finally:
        connection.close()


def push_raw(broker: Broker, settings: Settings, queue_name: str, body: bytes) -> None:
    """Put ``body`` straight into the queue, past every check ``enqueue`` makes."""
    if isinstance(broker, FairRedisBroker):
        broker.push_body(queue_name, body, level=Priority.NORMAL, tenant="default")
    else:
        publish_raw(settings, queue_name, body)


def delete_rabbitmq_queues(broker: Broker, settings: Settings, queue_name: str) -> None:
    """Delete every AMQP queue behind ``queue_name`` (its per-level queues too, where the broker has them)."""
    level_queues: Callable[[str], list[str]] = getattr(broker, "level_queues", lambda _name: [])
    routes = getattr(broker, "tenant_routes", None)
    tenant_queues = list(routes.declared) if routes is not None else []
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    try:
        channel = connection.channel()
        names = (queue_name, dq_name(queue_name), xq_name(queue_name), *level_queues(queue_name), *tenant_queues)
        for name in names:
            channel.queue_delete(name)
    finally:
        connection.close()


def send_jobs(broker: Broker, actor: Actor[Any, Any], jobs: range, seconds: float) -> list[Message[Any]]:
    """Enqueue one ``actor(job_id, seconds)`` per job id, in one round trip where the broker can."""
    messages = [actor.message_with_options(args=(job_id, seconds)) for job_id in jobs]
    enqueue_many = getattr(broker, "enqueue_many", None)
    if enqueue_many is not None:
        return list(enqueue_many(messages))
    return [broker.enqueue(message) for message in messages]
