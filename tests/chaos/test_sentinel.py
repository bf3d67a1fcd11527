"""Sentinel failover: a throwaway master, two replicas and three sentinels (tests/support/redis_sentinel.py);
the master is SIGKILLed and the same clients carry on with the promoted replica, without a restart.

Job runs are counted in the shared Redis (``chaos_support.RunLog``), which no test here breaks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from dramatiq import Worker

from dramatiq_fairway.connections import state_store_client
from dramatiq_fairway.ops.diagnostics import check
from dramatiq_fairway.settings import Settings, TlsSettings

from ..support.chaos_support import RunLog, declare_actors, send_jobs
from ..support.fair_support import fair_broker
from ..support.helpers import run_jobs, settings_env, wait_for
from ..support.redis_sentinel import SentinelGroup, sentinel_group
from ..support.tls import make_certificates

pytestmark = [pytest.mark.chaos, pytest.mark.sentinel]

JOBS = 2000
THREADS = 4


@pytest.fixture
def group(short_tmp: Path) -> Iterator[SentinelGroup]:
    with sentinel_group(short_tmp / "sentinel", replicas=2) as started:
        yield started


@pytest.fixture
def runs(namespace: str) -> Iterator[RunLog]:
    log = RunLog(namespace)
    yield log
    log.delete()


def _settings(group: SentinelGroup, namespace: str, data_dir: Path, wait_replicas: int) -> Settings:
    return Settings(
        broker="redis",
        redis_url=group.url,
        namespace=namespace,
        data_dir=data_dir,
        redis_wait_replicas=wait_replicas,
    )


def _cli_check(settings: Settings) -> dict[str, Any]:
    env = {**os.environ, **settings_env(settings)}
    result = subprocess.run(
        [sys.executable, "-m", "dramatiq_fairway.cli", "check", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_check_state_store_and_broker_follow_a_failover(
    group: SentinelGroup, namespace: str, queue_name: str, short_tmp: Path
) -> None:
    settings = _settings(group, namespace, short_tmp, wait_replicas=1)
    report = check(settings)
    assert (report.broker.mode, report.broker.replicas) == ("sentinel", 2)
    assert report.broker.master == f"127.0.0.1:{group.master_port()}"
    assert report.state_store.mode == "sentinel"

    store = state_store_client(settings)
    store.set(f"{namespace}:before", "kept")
    assert store.wait(1, 1000) >= 1
    broker = fair_broker(settings)
    job, _fail = declare_actors(broker, queue_name, namespace)
    job.send(1)

    old = group.kill_master()
    new = group.wait_for_new_master(old)

    # The same client objects, no restart: the pools ask the sentinels for the new master.
    store.set(f"{namespace}:after", "written")
    assert store.get(f"{namespace}:before") == b"kept"
    job.send(2)
    assert broker.join_size(queue_name) == 2
    assert _cli_check(settings)["broker"]["master"] == f"127.0.0.1:{new}"
    broker.close()
    store.close()


def test_rediss_sentinel_speaks_tls_to_sentinels_and_master(short_tmp: Path, namespace: str, queue_name: str) -> None:
    certificates = make_certificates(short_tmp / "certs")
    with sentinel_group(short_tmp / "tls", replicas=1, certificates=certificates) as group:
        settings = Settings(
            broker="redis",
            redis_url=group.url,
            namespace=namespace,
            data_dir=short_tmp,
            tls=TlsSettings(ca_file=certificates.ca),
        )
        assert settings.redis_url.startswith("rediss+sentinel://")
        report = check(settings)
        assert report.ok, report.failure()
        assert (report.broker.mode, report.broker.master) == ("sentinel", f"127.0.0.1:{group.master_port()}")
        broker = fair_broker(settings)
        assert sorted(run_jobs(broker, queue_name, [1, 2, 3])) == [1, 2, 3]
        broker.close()
        # Without our CA the sentinels' certificate is refused: TLS is really in use.
        refused = check(settings.model_copy(update={"tls": TlsSettings()}))
        assert not refused.broker.reachable


@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_master_sigkilled_mid_drain(
    group: SentinelGroup,
    namespace: str,
    *,
    queue_name: str,
    short_tmp: Path,
    runs: RunLog,
    wait_replicas: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = _settings(group, namespace, short_tmp, wait_replicas)
    broker = fair_broker(settings)
    job, _fail = declare_actors(broker, queue_name, namespace)
    upfront, streamed = range(JOBS // 2), range(JOBS // 2, JOBS)
    send_jobs(broker, job, upfront, seconds=0.002)
    sent: list[int] = []
    failed_sends: list[str] = []
    failover_done = threading.Event()
    sent_after_failover: list[int] = []

    def produce() -> None:
        # One send at a time, through the failover, on the same broker: the producer never restarts.
        for job_id in streamed:
            try:
                job.send(job_id, 0.002)
            except redis.RedisError as error:
                failed_sends.append(f"{job_id}: {error}")
                continue
            (sent_after_failover if failover_done.is_set() else sent).append(job_id)
            time.sleep(0.004)

    worker = Worker(broker, worker_threads=THREADS, worker_timeout=50)
    worker.start()
    producer = threading.Thread(target=produce, name="sentinel-producer")
    producer.start()
    try:
        wait_for(lambda: runs.size() >= 400, timeout=120, interval=0.05)
        old = group.kill_master()
        group.wait_for_new_master(old)
        failover_done.set()
        producer.join(timeout=180)
        assert not producer.is_alive()
        # Jobs sent once the new master was named are guaranteed to run, WAIT or not.
        wait_for(lambda: set(sent_after_failover) <= set(runs.counts()), timeout=180, interval=0.25)
        expected = set(upfront) | set(sent) | set(sent_after_failover)
        if wait_replicas:
            wait_for(lambda: expected <= set(runs.counts()), timeout=180, interval=0.25)
        else:
            _wait_until_quiet(runs, seconds=3.0, timeout=120)
    finally:
        worker.stop(timeout=10_000)
        broker.close()
    lost = sorted(expected - set(runs.counts()))
    with capsys.disabled():
        print(
            f"\nsentinel failover, WAIT_REPLICAS={wait_replicas}: {len(expected)} jobs sent, "
            f"{len(lost)} lost, {runs.size() - len(expected) + len(lost)} extra runs (at least once), "
            f"{len(sent_after_failover)} sent after the failover, {len(failed_sends)} sends failed"
        )
    assert not failed_sends, failed_sends[:5]
    assert sent_after_failover, "the producer finished before the failover: nothing shows it continued"
    if wait_replicas:
        assert not lost, lost[:20]


def _wait_until_quiet(runs: RunLog, seconds: float, timeout: float) -> None:
    """Wait until no job finished for ``seconds`` (what is still missing then is lost)."""
    last = [runs.size(), time.monotonic()]

    def quiet() -> bool:
        size = runs.size()
        if size != last[0]:
            last[:] = [size, time.monotonic()]
        return time.monotonic() - float(last[1]) >= seconds

    wait_for(quiet, timeout=timeout, interval=0.25)
