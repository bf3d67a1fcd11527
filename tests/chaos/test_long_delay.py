"""Delays ten times longer than RabbitMQ's ``consumer_timeout`` (Dramatiq issue #827), on a throwaway
node started with a 3 s timeout: parked delays run once, on time, and no channel is ever closed.

The node checks the timeout on every channel tick; the tick is lowered from 60 s to 0.5 s so a
breach would be seen within the test (the first part of the test shows that it would be).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pika
import pytest
from dramatiq import Worker
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import Retry

from dramatiq_fairway import setup
from dramatiq_fairway.brokers.rabbitmq import FairRabbitmqBroker
from dramatiq_fairway.brokers.rabbitmq_delay import ParkQueues, park_queue_name
from dramatiq_fairway.settings import Settings

from ..conftest import REDIS_URL, redis_for_tests
from ..support.chaos_support import READY_LINE, RunLog, chaos_env, declare_actors, log_tail
from ..support.fair_support import delete_namespace
from ..support.helpers import dramatiq_command, wait_for
from ..support.long_delay_app import HORIZON_ENV, WORKER_APP
from ..support.rabbitmq_node import RabbitmqNode, throwaway_rabbitmq

pytestmark = pytest.mark.chaos

CONSUMER_TIMEOUT_MS = 3_000
DELAY_MS = 10 * CONSUMER_TIMEOUT_MS
ADVANCED_CONFIG = f"[{{rabbit, [{{consumer_timeout, {CONSUMER_TIMEOUT_MS}}}, {{channel_tick_interval, 500}}]}}]."
PORTS = (17341, 17342)
# What would show a closed channel or connection in this process's logs (pika's and Dramatiq's).
CLOSED_SIGNS = ("Channel.Close", "timed out", "ConnectionClosed", "connection error", "Restarting")
# Except the queue-depth sampler's passive count of a level queue not declared yet, which closes
# that sampler's own channel by design (middlewares/queue_depth.py).
NOT_DECLARED_YET = "Channel.Close (404)"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitmqNode]:
    directory = Path(tmp_path_factory.mktemp("rabbit", numbered=True))
    with throwaway_rabbitmq(directory, advanced_config=ADVANCED_CONFIG, ports=PORTS) as started:
        yield started


@pytest.fixture
def cleanup_namespace(namespace: str) -> Iterator[None]:
    yield
    client = redis_for_tests()
    delete_namespace(client, namespace)
    client.close()


def test_the_node_closes_a_channel_holding_a_delivery_beyond_its_timeout(
    node: RabbitmqNode, caplog: pytest.LogCaptureFixture
) -> None:
    """The premise: on this node, stock Dramatiq's way of holding a delayed message fails."""
    # `fairway` quiets pika for its users; a CLI test run in this process before may have done so.
    caplog.set_level(logging.WARNING, logger="pika")
    connection = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{node.port}/%2F"))
    channel = connection.channel()
    channel.queue_declare("held", auto_delete=True)
    channel.basic_publish("", "held", b"{}")
    channel.basic_consume("held", lambda *_: None)
    deadline = time.monotonic() + 3 * CONSUMER_TIMEOUT_MS / 1000
    while channel.is_open and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.2)
    assert channel.is_closed
    assert "timed out" in caplog.text
    connection.close()


@pytest.mark.usefixtures("cleanup_namespace")
def node_settings(node: RabbitmqNode, namespace: str, data_dir: Path) -> Settings:
    return Settings(
        broker="rabbitmq",
        rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{node.port}/%2F",
        state_url=REDIS_URL,
        namespace=namespace,
        data_dir=data_dir,
    )


def test_delays_of_ten_times_the_consumer_timeout_run_once_on_time_and_no_channel_closes(
    node: RabbitmqNode, namespace: str, queue_name: str, short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = setup(node_settings(node, namespace, short_tmp))
    assert isinstance(broker, FairRabbitmqBroker)
    broker.park_queues = ParkQueues(CONSUMER_TIMEOUT_MS // 3, broker.layout)
    runs: Counter[str] = Counter()
    late_ms: dict[str, int] = {}

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=1)
    def job(key: str, eta: int) -> None:
        runs[key] += 1
        late_ms[key] = current_millis() - eta

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=1)
    def retried(key: str) -> None:
        runs[key] += 1
        if runs[key] == 1:
            late_ms[key] = current_millis() + DELAY_MS
            raise Retry(delay=DELAY_MS)
        late_ms[key] = current_millis() - late_ms[key]

    caplog.set_level(logging.INFO)
    worker = Worker(broker, worker_threads=2)  # Dramatiq's default worker_timeout (1 s)
    worker.start()
    try:
        for n in range(10):
            job.send_with_options(args=(f"d{n}", current_millis() + DELAY_MS), delay=DELAY_MS)
        retried.send("r0")
        expected = {f"d{n}" for n in range(10)} | {"r0"}
        wait_for(lambda: set(late_ms) == expected and runs["r0"] == 2, timeout=DELAY_MS / 1000 + 15, interval=0.2)
        time.sleep(1.0)
        during_run = list(caplog.records)
    finally:
        worker.stop()
        broker.close()
    assert runs == {**{f"d{n}": 1 for n in range(10)}, "r0": 2}
    # On time: not before the eta, and within a second after it.
    assert all(0 <= late <= 1_000 for late in late_ms.values()), late_ms
    closed = [
        f"{r.threadName} {r.name}: {r.getMessage()}"
        for r in during_run
        if any(sign in r.getMessage() for sign in CLOSED_SIGNS) and NOT_DECLARED_YET not in r.getMessage()
    ]
    assert closed == [], "\n".join(closed)


def _ready_pid(log: Path) -> int:
    wait_for(lambda: READY_LINE in log.read_text(errors="replace"), timeout=60)
    line = next(line for line in log.read_text(errors="replace").splitlines() if READY_LINE in line)
    return int(line.split("[PID ")[1].split("]")[0])


@pytest.mark.usefixtures("cleanup_namespace")
def test_a_worker_sigkilled_while_messages_are_parked_loses_none(
    node: RabbitmqNode, namespace: str, queue_name: str, short_tmp: Path
) -> None:
    settings = node_settings(node, namespace, short_tmp)
    producer = setup(settings)
    assert isinstance(producer, FairRabbitmqBroker)
    producer.park_queues = ParkQueues(1_000, producer.layout)
    runs = RunLog(namespace)
    env = {**chaos_env(settings, queue_name), HORIZON_ENV: "1000"}
    jobs = range(20)
    try:
        job, _fail = declare_actors(producer, queue_name, namespace)
        park = park_queue_name(dq_name(queue_name), 4_000)
        first_log, second_log = short_tmp / "first.log", short_tmp / "second.log"
        with dramatiq_command(WORKER_APP, env, threads=2, log_file=first_log):
            pid = _ready_pid(first_log)
            # Sent once the worker is up: the park queue holds them for 4 s, less than a loaded
            # machine can take to start a worker (they would have left it before the kill).
            for n in jobs:
                job.send_with_options(args=(n,), delay=6_000)
            assert producer.passive_count(park) == len(jobs)
            os.kill(pid, signal.SIGKILL)
        assert runs.size() == 0
        with dramatiq_command(WORKER_APP, env, threads=2, log_file=second_log):
            wait_for(lambda: runs.all_done(jobs), timeout=60)
            time.sleep(1.0)
            assert runs.counts() == dict.fromkeys(jobs, 1), log_tail(second_log)
    finally:
        runs.delete()
        producer.close()
