"""Per-tenant limits: what enforcing them costs, and how they compare with Dramatiq's own limiter.

    python bench/limits.py                       # everything, one table
    python bench/limits.py --repetitions 3 --dispatch-jobs 10000

1. Dispatch throughput on Redis (in process, FairRedisBroker's script alone): N no-op messages
   over 100 tenants, fetched 16 at a time and acked one by one as a worker does, with limits unset,
   set but never reached (every tenant capped at 10,000 and 1,000,000/s), and set and reached on
   every pick (8 tenants capped at 1: each fetch parks and each ack unparks). The three queues are
   drained in alternating chunks of 480 so that a busy machine slows them alike; median of the
   repetitions. The target is set / unset >= 0.90.
2. The cap scenario with the real ``dramatiq`` command, 2 processes x 4 threads (bench/limits_app.py):
   tenant A capped at 2 running jobs, tenant B uncapped, 200 jobs of 50 ms each, sent at once to an
   idle worker. Fairway on Redis (the dispatch script), fairway on RabbitMQ (TenantLimiter, state
   store on Redis), and stock Dramatiq (RedisBroker + ConcurrentRateLimiter(limit=2) around A's
   jobs, Retries with min_backoff 100 ms, max_backoff 1 s, so that its retries end quickly).
   Reported: makespan, the most A jobs seen running at once, retries used, messages re-published
   to wait, and Redis commands per job (INFO commandstats of the Redis under test, before/after).

Every Redis measured is a throwaway ``redis-server`` this script starts on a free port, so other
users of the machine's Redis do not show up in the command counts; job bookkeeping goes to
``--stats-url``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pika
import redis
from dramatiq import Message
from dramatiq.common import dq_name, xq_name

from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.settings import LimitSettings, Settings, TenantLimit

ROOT = Path(__file__).resolve().parent.parent
STATS = "bench:limits:"
DISPATCH_MODES = {
    "unset": (LimitSettings(), 100),
    "set": (LimitSettings(default=TenantLimit(max_concurrency=10_000, rate=1_000_000, burst=1_000_000)), 100),
    "reached": (LimitSettings(default=TenantLimit(max_concurrency=1)), 8),
}
CHUNK = 480
CAP_RUNS = (("fairway", "redis"), ("fairway", "rabbitmq"), ("stock", "redis"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dispatch-jobs", type=int, default=20_000)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--cap-jobs", type=int, default=200, help="jobs per tenant in the cap scenario")
    parser.add_argument("--seconds", type=float, default=0.05, help="duration of each job")
    parser.add_argument("--stats-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--brokers", nargs="+", default=["redis", "rabbitmq"], choices=["redis", "rabbitmq"])
    parser.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    args = parser.parse_args()

    print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with throwaway_redis() as url:
        rates = dispatch_throughput(url, args.dispatch_jobs, args.repetitions)
        caps = {run: cap_scenario(url, *run, args) for run in CAP_RUNS if run[1] in args.brokers}
    caps.update({run: {} for run in CAP_RUNS if run not in caps})
    print_table(rates, caps, args)


# 1. Dispatch throughput.


def dispatch_throughput(url: str, jobs: int, repetitions: int) -> dict[str, float]:
    """Msgs/s of each mode. The modes drain their own queues in alternating chunks, so that the load
    of a shared machine falls on all of them alike; the median over repetitions is kept."""
    samples: dict[str, list[float]] = {mode: [] for mode in DISPATCH_MODES}
    for _ in range(repetitions):
        with ExitStack() as stack:
            drains = {
                mode: stack.enter_context(filled_queue(url, limits, tenants, jobs))
                for mode, (limits, tenants) in DISPATCH_MODES.items()
            }
            elapsed = dict.fromkeys(drains, 0.0)
            drained = dict.fromkeys(drains, 0)
            while any(count < jobs for count in drained.values()):
                for mode, drain in drains.items():
                    started = time.perf_counter()
                    drained[mode] += drain(CHUNK)
                    elapsed[mode] += time.perf_counter() - started
        for mode in DISPATCH_MODES:
            samples[mode].append(drained[mode] / elapsed[mode])
    return {mode: statistics.median(values) for mode, values in samples.items()}


@contextmanager
def filled_queue(url: str, limits: LimitSettings, tenants: int, jobs: int) -> Iterator[Callable[[int], int]]:
    """A FairRedisBroker with ``jobs`` no-op messages over ``tenants`` tenants; yields a function that
    fetches (16 at a time) and acks (one by one, as a worker does) up to n messages and says how many."""
    namespace = f"benchlim-{uuid.uuid4().hex[:8]}"
    settings = Settings(broker="redis", redis_url=url, namespace=namespace, limits=limits)  # type: ignore[arg-type]
    broker = FairRedisBroker(client=redis.Redis.from_url(url), namespace=namespace, settings=settings)
    queue = "dispatch"

    def drain(n: int) -> int:
        done = 0
        while done < n and (pairs := broker.fetch(queue, min(16, n - done))):
            for rid, _ in pairs:
                broker.settle(queue, "ack", [rid])
            done += len(pairs)
        return done

    try:
        broker.enqueue_many(
            Message(queue_name=queue, actor_name="noop", args=(), kwargs={}, options={"tenant": f"t{i % tenants}"})
            for i in range(jobs)
        )
        broker.fetch(queue, 0)  # installs the limits, as a worker's first fetch does
        yield drain
    finally:
        broker.flush(queue)
        broker.close()
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(match="{" + namespace + "*", count=1000):
            client.delete(key)


# 2. The cap scenario.


def cap_scenario(url: str, mode: str, broker_kind: str, args: argparse.Namespace) -> dict[str, Any]:
    queue = f"bench_limits_{mode}_{uuid.uuid4().hex[:6]}"
    env = {
        "BENCH_MODE": mode,
        "BENCH_QUEUE": queue,
        "BENCH_STATS_URL": args.stats_url,
        "FAIRWAY_BROKER": broker_kind,
        "FAIRWAY_REDIS_URL": url,
        "FAIRWAY_STATE_URL": url,
        "FAIRWAY_RABBITMQ_URL": args.rabbitmq_url,
        "FAIRWAY_NAMESPACE": f"benchlim-{uuid.uuid4().hex[:8]}",
        "FAIRWAY_LIMITS__TENANTS": '{"a": {"max_concurrency": 2}}',
        "FAIRWAY_METRICS__PORT": "0",
    }
    stats = redis.Redis.from_url(args.stats_url)
    measured = redis.Redis.from_url(url)
    app = load_app(env)
    with worker(env, queue):
        reset(stats)
        app.work.send_with_options(args=("warmup", 0.0), tenant="warmup")
        wait_until(lambda: int(stats.get(STATS + "done") or 0) >= 1, 60)
        reset(stats)
        before = command_calls(measured)
        started = time.perf_counter()
        for _ in range(args.cap_jobs):
            for tenant in ("a", "b"):
                app.work.send_with_options(args=(tenant, args.seconds), tenant=tenant)
        total = 2 * args.cap_jobs
        wait_until(lambda: int(stats.get(STATS + "done") or 0) >= total, 1800)
        makespan = time.perf_counter() - started
        calls = command_calls(measured) - before
        attempts = sum(int(stats.get(STATS + f"attempts:{tenant}") or 0) for tenant in ("a", "b"))
        result = {
            "makespan": makespan,
            "max_a": max(int(x) for x in stats.lrange(STATS + "peaks:a", 0, -1)),
            "max_b": max(int(x) for x in stats.lrange(STATS + "peaks:b", 0, -1)),
            "retries": attempts - total,
            "held": int(stats.get(STATS + "held") or 0),
            "commands": calls / total,
        }
    app.broker.flush_all()
    app.broker.close()
    if broker_kind == "rabbitmq":
        delete_rabbitmq_queues(env, queue)
    reset(stats)
    return result


def load_app(env: dict[str, str]) -> ModuleType:
    """bench/limits_app.py loaded in this process with ``env``: the producer side of a run."""
    os.environ.update(env)
    sys.path.insert(0, str(ROOT / "bench"))
    sys.modules.pop("limits_app", None)
    import limits_app

    return limits_app


@contextmanager
def worker(env: dict[str, str], queue: str) -> Iterator[None]:
    command = [sys.executable, "-m", "dramatiq", "limits_app", "--processes", "2", "--threads", "4"]
    command += ["--path", str(ROOT / "bench"), "--queues", queue]
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


def command_calls(client: redis.Redis) -> int:
    """Commands the server ran so far (INFO itself left out)."""
    info = client.info("commandstats")
    return sum(int(stat["calls"]) for name, stat in info.items() if name != "cmdstat_info")


def reset(stats: redis.Redis) -> None:
    keys = list(stats.scan_iter(match=STATS + "*", count=1000))
    if keys:
        stats.delete(*keys)


def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the run did not finish")
        time.sleep(0.01)


def delete_rabbitmq_queues(env: dict[str, str], queue: str) -> None:
    settings = Settings(rabbitmq_url=env["FAIRWAY_RABBITMQ_URL"])
    connection = pika.BlockingConnection(rabbitmq_parameters(settings))
    channel = connection.channel()
    for name in (queue, dq_name(queue), xq_name(queue)):
        channel.queue_delete(name)
    connection.close()


@contextmanager
def throwaway_redis() -> Iterator[str]:
    """A redis-server of our own on a free port (Debian's, else the one on PATH)."""
    binary = "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else shutil.which("redis-server")
    assert binary, "redis-server not found"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: _pings(url), 10)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.ConnectionError:
        return False


def print_table(rates: dict[str, float], caps: dict[tuple[str, str], dict[str, Any]], args: argparse.Namespace) -> None:
    columns = ["fairway, Redis", "fairway, RabbitMQ", "stock ConcurrentRateLimiter, Redis"]
    dash = ["-", "-"]
    rows: list[tuple[str, list[str]]] = [
        (
            f"dispatch msgs/s, limits unset ({args.dispatch_jobs:,} msgs, 100 tenants)",
            [f"{rates['unset']:,.0f}", *dash],
        ),
        ("dispatch msgs/s, limits set, never reached", [f"{rates['set']:,.0f}", *dash]),
        ("ratio set / unset (target ≥ 0.90)", [f"{rates['set'] / rates['unset']:.2f}", *dash]),
        ("dispatch msgs/s, cap 1 reached on every pick (8 tenants)", [f"{rates['reached']:,.0f}", *dash]),
    ]
    cap = [
        caps[run] or dict.fromkeys(("makespan", "max_a", "max_b", "retries", "held", "commands"), 0) for run in CAP_RUNS
    ]
    label = f"cap scenario ({args.cap_jobs} x {args.seconds * 1000:.0f} ms per tenant, 2x4)"
    rows += [
        (f"{label}: makespan s", [f"{c['makespan']:.1f}" for c in cap]),
        ("most A jobs running at once (cap 2)", [str(c["max_a"]) for c in cap]),
        ("most B jobs running at once", [str(c["max_b"]) for c in cap]),
        ("retries used", [str(c["retries"]) for c in cap]),
        ("messages re-published to wait", [str(c["held"]) for c in cap]),
        ("Redis commands per job", [f"{c['commands']:.1f}" for c in cap]),
    ]
    print()
    print("| measure | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, values in rows:
        print(f"| {name} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
