"""CPU per job of the worker-side middleware hooks, in this process: steady on a busy machine.

    BENCH_REDIS_URL=redis://127.0.0.1:17730/0 python bench/hook_cost.py
    FAIRWAY_BROKER=rabbitmq BENCH_REDIS_URL=... python bench/hook_cost.py

Builds the ``setup()`` stack (the broker ``FAIRWAY_BROKER`` picks; the state store at
``BENCH_REDIS_URL``, a Redis of your own), makes fresh ``MessageProxy`` objects of a no-op actor and
times, per job, ``emit_before``/``emit_after`` of ``process_message`` and ``ack`` as a worker thread
emits them (thread CPU, least of many batches), then each middleware's own
``before``/``after_process_message`` hooks on proxies as the worker thread leaves them.
docs/benchmarks.md, "Worker hooks", has the figures.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections import defaultdict
from typing import Any

url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("FAIRWAY_BROKER", "redis")
os.environ.setdefault("FAIRWAY_REDIS_URL", url)
os.environ.setdefault("FAIRWAY_STATE_URL", url)
# A namespace of the run's own, deleted at the end: the hooks write a status for each of the
# ~50,000 jobs, which would stay for their TTL (a week for a job that never finished).
NAMESPACE = os.environ.setdefault("FAIRWAY_NAMESPACE", f"bench-hook-cost-{uuid.uuid4().hex[:8]}")

import dramatiq  # noqa: E402 - after the settings' environment
import redis  # noqa: E402
from dramatiq.broker import MessageProxy  # noqa: E402

import dramatiq_fairway  # noqa: E402
from dramatiq_fairway import JobStatus  # noqa: E402
from dramatiq_fairway.brokers import delivery  # noqa: E402
from dramatiq_fairway.store import delete_namespace  # noqa: E402

BATCH, BATCHES = 2000, 21
broker = dramatiq_fairway.setup()


@dramatiq.actor(queue_name="bench_hook_cost", max_retries=0)
def noop() -> None:
    """Nothing: what is measured is the middleware."""


def proxies(count: int, *, taken: bool = False) -> list[MessageProxy]:
    made = [MessageProxy(noop.message()) for _ in range(count)]
    if taken:  # as HoldsAtStart leaves a proxy when a worker thread takes it
        for proxy in made:
            delivery._settle(proxy)
    return made


def emits_per_job(messages: list[MessageProxy]) -> float:
    before, after = broker.emit_before, broker.emit_after
    started = time.thread_time()
    for message in messages:
        before("process_message", message)
        after("process_message", message, result=None)
        before("ack", message)
        after("ack", message)
    return (time.thread_time() - started) / len(messages) * 1e6


def per_middleware() -> dict[str, float]:
    least: dict[str, float] = defaultdict(lambda: float("inf"))
    for _ in range(5):
        messages, spent = proxies(BATCH, taken=True), defaultdict(float)
        calls: list[tuple[str, dict[str, Any]]] = [("before_process_message", {}), ("after_process_message", {})]
        for name, kwargs in calls:
            for middleware, hook in broker.hooks(name):  # type: ignore[attr-defined]
                started = time.thread_time()
                for message in messages:
                    # A hook refusing a bench message is timed all the same.
                    with contextlib.suppress(Exception):
                        hook(broker, message, **kwargs)
                spent[type(middleware).__name__] += time.thread_time() - started
        for name, seconds in spent.items():
            least[name] = min(least[name], seconds / BATCH * 1e6)
    return least


def main() -> None:
    try:
        emits_per_job(proxies(500))  # warm up: hook tables, children, the status writer's thread
        batches = [emits_per_job(proxies(BATCH)) for _ in range(BATCHES)]
        print(f"emit per job: least {min(batches):.2f} µs, median {sorted(batches)[BATCHES // 2]:.2f} µs")
        for name, micros in sorted(per_middleware().items(), key=lambda item: -item[1]):
            print(f"  {name:24s} {micros:6.2f} µs")
    finally:
        for middleware in broker.middleware:
            if isinstance(middleware, JobStatus):
                middleware.writer.close()  # its last flush lands before the namespace goes
        delete_namespace(redis.Redis.from_url(os.environ["FAIRWAY_STATE_URL"]), NAMESPACE)


if __name__ == "__main__":
    main()
