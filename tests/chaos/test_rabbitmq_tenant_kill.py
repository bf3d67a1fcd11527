"""Chaos on RabbitMQ with tenant queues: a worker process SIGKILLed mid-drain loses nothing.

One tenant floods (past ``RABBITMQ_ISOLATE_AT`` its jobs go to a queue of its own) while small
tenants stay on the shared lanes, so the victim holds deliveries from lanes and from an own queue,
some of them gated, when it dies. Every job must run, duplicates only among what the victim ran,
and the state store's per-tenant counts must settle to zero (the victim's acks whose decrements
died with it are healed by the live workers).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from dramatiq import Broker

from dramatiq_fairway.brokers.rabbitmq import FairwayRabbitmqBroker
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.tenant_counts import OWN

from ..support.chaos_support import RunLog, chaos_env, declare_actors, log_tail, worker_commands
from ..support.helpers import wait_for

pytestmark = pytest.mark.chaos

THREADS = 4
# What one worker process is handed beyond its running jobs (Dramatiq's 2 x threads).
PREFETCH = 2 * THREADS
FLOOD = 1500
SMALL_TENANTS = 40
SMALL_JOBS = 10


@pytest.fixture
def runs(namespace: str) -> Iterator[RunLog]:
    log = RunLog(namespace)
    yield log
    log.delete()


@pytest.mark.parametrize("broker_kind", ["rabbitmq"])
def test_sigkill_of_a_worker_mid_drain_with_tenant_queues_loses_no_job(
    broker: Broker, settings: Settings, queue_name: str, runs: RunLog, short_tmp: Path
) -> None:
    assert isinstance(broker, FairwayRabbitmqBroker)
    job, _fail = declare_actors(broker, queue_name, settings.namespace)
    jobs = range(FLOOD + SMALL_TENANTS * SMALL_JOBS)
    for job_id in jobs:
        small = job_id >= FLOOD
        tenant = f"small{job_id % SMALL_TENANTS}" if small else "noisy"
        job.send_with_options(args=(job_id, 0.002), tenant=tenant)
    counts = broker.tenant_counts
    assert counts is not None
    assert any(slot.tenant == "noisy" and slot.kind == OWN for slot in counts.snapshot(queue_name))
    with worker_commands(chaos_env(settings, queue_name), short_tmp, count=2, threads=THREADS) as commands:
        victim = commands[0]
        victim_pid = victim.worker_pid()
        wait_for(lambda: runs.size() >= 300 and victim_pid in {pid for pid, _ in runs.runs()}, timeout=120)
        os.kill(victim_pid, signal.SIGKILL)
        # The dramatiq master exits when one of its processes dies; a supervisor starts it again.
        wait_for(victim.exited, timeout=60)
        victim.start()
        try:
            wait_for(lambda: runs.all_done(jobs), timeout=240, interval=0.25)
            wait_for(lambda: counts.snapshot(queue_name) == {}, timeout=60, interval=0.25)
        except AssertionError as error:
            logs = "\n".join(f"--- {c.log_file}\n{log_tail(c.log_file)}" for c in commands)
            raise AssertionError(f"{error}; {runs.size()} runs\n{logs}") from None
    ran = runs.counts()
    assert set(ran) == set(jobs)
    duplicates = {job_id for job_id, count in ran.items() if count > 1}
    ran_in_victim = {job_id for pid, job_id in runs.runs() if pid == victim_pid}
    assert duplicates <= ran_in_victim
    assert len(duplicates) <= PREFETCH + THREADS, sorted(duplicates)
