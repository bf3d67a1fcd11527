"""CPU and round trips per job: where the fairway stack's overhead goes, plain Dramatiq beside it.

    python bench/hotpath.py                  # Redis and RabbitMQ, 3,000 no-op jobs each
    python bench/hotpath.py --brokers redis --jobs 5000

Throughput on a 2-core machine is bounded by CPU shared between the worker, the producer and the
server, so CPU per job predicts the throughput ratio of ``bench/overhead.py`` and, unlike
wall-clock throughput, stays steady while other work runs. For each broker and mode the real
``dramatiq`` command (1 process x 8 threads) runs ``bench/app.py``; the table shows, per job, the
CPU time of the worker process, of this producer process and of the servers (Redis, and RabbitMQ's
Erlang VM), the Redis commands sent (broker and state store), and the ratio of total CPU
plain / fairway (1.0 = no overhead). As in ``overhead.py`` the jobs are sent while the worker is
stopped and the worker, server and Redis figures cover the drain that follows: measured while the
producer sends, a worker faster than its producer is woken once per job, and that wake-up, not
the middleware, is what would be counted. The producer column is the send.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import redis
from overhead import App, worker


@dataclass
class Cost:
    worker_us: float
    producer_us: float
    server_us: float
    redis_calls: float

    @property
    def total_us(self) -> float:
        return self.worker_us + self.producer_us + self.server_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", nargs="+", default=["redis", "rabbitmq"], choices=["redis", "rabbitmq"])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--kind", default="noop", choices=["noop", "one_ms"])
    args = parser.parse_args()

    # BENCH_REDIS_URL: a Redis already started for benchmarks (on this machine: its CPU is read).
    if url := os.environ.get("BENCH_REDIS_URL"):
        pid = redis.Redis.from_url(url).info("server")["process_id"]
        report(args, url, psutil.Process(pid))
        return
    with own_redis() as (redis_url, server):
        report(args, redis_url, server)


def report(args: argparse.Namespace, redis_url: str, server: psutil.Process) -> None:
    print("| broker | mode | worker µs/job | producer µs/job | servers µs/job | Redis calls/job | CPU plain/fairway |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for broker in args.brokers:
        costs = {
            mode: measure(broker, mode, args.kind, args.jobs, redis_url=redis_url, server=server)
            for mode in ("plain", "fairway")
        }
        for mode, cost in costs.items():
            ratio = costs["plain"].total_us / cost.total_us
            print(
                f"| {broker} | {mode} | {cost.worker_us:.0f} | {cost.producer_us:.0f} | {cost.server_us:.0f} "
                f"| {cost.redis_calls:.2f} | {ratio:.2f} |"
            )


@contextmanager
def own_redis() -> Iterator[tuple[str, psutil.Process]]:
    """A Redis of this benchmark's own, so other clients' commands and CPU don't count."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as data_dir:
        command = ["/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", data_dir]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        try:
            yield url, psutil.Process(process.pid)
        finally:
            process.terminate()
            process.wait()


def measure(broker: str, mode: str, kind: str, jobs: int, *, redis_url: str, server: psutil.Process) -> Cost:
    with worker(broker, mode, 1, 8, redis_url) as app:
        workers = _worker_processes()
        servers = [server, *_rabbitmq_processes()] if broker == "rabbitmq" else [server]
        server_client = redis.Redis.from_url(redis_url)
        actor = getattr(app.module, kind)
        with app.stopped():
            producer_started = time.process_time()
            for _ in range(jobs):
                actor.send()
            producer = time.process_time() - producer_started
            before = _snapshot(workers, servers, server_client)
        _drain(app)
        after = _snapshot(workers, servers, server_client)
    return Cost(
        worker_us=(after[0] - before[0]) / jobs * 1e6,
        producer_us=producer / jobs * 1e6,
        server_us=(after[1] - before[1]) / jobs * 1e6,
        redis_calls=(after[2] - before[2]) / jobs,
    )


def _drain(app: App) -> None:
    app.module.broker.join(app.module.QUEUE, timeout=600_000)


def _worker_processes() -> list[psutil.Process]:
    me = psutil.Process()
    return [p for p in me.children(recursive=True) if "dramatiq" in " ".join(p.cmdline())]


def _rabbitmq_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _snapshot(workers: list[psutil.Process], servers: list[psutil.Process], client: redis.Redis) -> tuple[float, ...]:
    calls = sum(stat["calls"] for name, stat in client.info("commandstats").items() if name != "cmdstat_info")
    return _cpu(workers), _cpu(servers), float(calls)


if __name__ == "__main__":
    main()
