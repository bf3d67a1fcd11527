"""The noisy-neighbour acceptance of issue #20, shared by the shared-node test
(tests/brokers/test_rabbitmq_tenants.py) and the 3-node cluster one (tests/chaos/test_rabbitmq_cluster.py).

One tenant floods a queue, then each small tenant sends ``SMALL_JOBS`` after it; one worker thread
runs them, so the order they start in is the order the consumer handed them out. Every small-tenant
job must run within the first ``FIRST_SHARE`` of that order, and FIFO must hold per tenant.
"""

from __future__ import annotations

import threading
import time

import dramatiq
from dramatiq import Broker

from .helpers import wait_for

NOISY = "noisy"
SMALL_JOBS = 5
FIRST_SHARE = 0.2

# (tenant, n) in the order the jobs ran.
RunOrder = list[tuple[str, int]]


def ordered_tenant_job(broker: Broker, queue_name: str) -> tuple[dramatiq.Actor[..., None], RunOrder]:
    """An actor that records (tenant, n) as it runs, and the list it records into."""
    order: RunOrder = []
    lock = threading.Lock()
    broker.add_middleware(dramatiq.middleware.CurrentMessage())

    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name=f"job_{queue_name}")
    def job(n: int) -> None:
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        assert message is not None
        with lock:
            order.append((str(message.options["tenant"]), n))
        time.sleep(0.0005)  # a short real job

    return job, order


def flood_then_small_tenants(job: dramatiq.Actor[..., None], *, flood: int, small_tenants: int) -> list[str]:
    """Send the flood, then ``SMALL_JOBS`` per small tenant; the small tenants' names."""
    for n in range(flood):
        job.send_with_options(args=(n,), tenant=NOISY)
    small = [f"small{i}" for i in range(small_tenants)]
    for tenant in small:
        for n in range(SMALL_JOBS):
            job.send_with_options(args=(n,), tenant=tenant)
    return small


def assert_small_tenants_ran_first(
    order: RunOrder, small: list[str], *, flood: int, label: str, timeout: float = 120
) -> int:
    """Wait for every job to run; assert the bound and FIFO per tenant; the last small job's position (1-based)."""
    total = flood + SMALL_JOBS * len(small)
    wait_for(lambda: len(order) >= total, timeout=timeout)
    last = 1 + max(position for position, (tenant, _n) in enumerate(order) if tenant != NOISY)
    print(f"\n{label}: {len(small)} small tenants: last small-tenant job at position {last} of {total}")
    assert last <= FIRST_SHARE * total
    for tenant in [NOISY, *small]:
        assert [n for t, n in order if t == tenant] == list(range(flood if tenant == NOISY else SMALL_JOBS)), tenant
    return last
