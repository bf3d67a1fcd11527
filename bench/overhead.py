"""Throughput and latency of the fairway stack against plain Dramatiq, measured in the same run.

    python bench/overhead.py                 # Redis and RabbitMQ, 1x8 and 2x8, 3 repetitions
    python bench/overhead.py --brokers redis --repetitions 1 --jobs 2000
    python bench/overhead.py --tracing       # also fairway with tracing on (always-on sampler)
    python bench/overhead.py --tracing simple batch   # with either span processor: ratios to fairway
    python bench/overhead.py --tracing simple dropped # spans kept in memory, or none kept
    python bench/overhead.py --encryption    # also fairway with payload encryption: ratio encrypted / fairway

For each broker, job kind (no-op, 1 ms) and worker shape (processes x threads), the real
``dramatiq`` command runs ``bench/app.py`` in plain and in fairway mode, alternated within each
repetition. A run fills the queue while the warmed-up worker's processes are stopped (SIGSTOP), then resumes
them and times until marker jobs sent last have run: the worker's drain rate, which is what
middleware costs, not the producer's send rate. The table shows medians and the ratio fairway / plain. Then 500
single jobs on an idle worker give the enqueue → start latency (p50 / p99).

Two CPU tables follow, steadier than the rates on a shared or virtual machine: the worker
processes' CPU µs per job, and all of it, the Redis and RabbitMQ servers' CPU over the drain added
(the ``redis-server`` and ``beam.smp`` processes of this machine; none when the servers run
elsewhere). With two worker processes the machine's two cores are full, and the rate follows the
whole CPU a job costs wherever it is spent (docs/benchmarks.md).

With ``--encryption`` a third mode runs fairway with ``FAIRWAY_ENCRYPTION__KEYS`` set, and a third
job kind, ``payload`` (a no-op taking a 1 KiB string), gives the sealing something to seal.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import dramatiq
import psutil
import redis
from dramatiq.encoder import JSONEncoder

from dramatiq_fairway.store import delete_namespace

ROOT = Path(__file__).resolve().parent.parent
# BENCH_REDIS_URL: another Redis than the shared one, so two benchmarks can run side by side.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# Marker jobs ending a throughput run: enough that each worker process runs some after its last job.
FINISH_MARKS = 32
DRAIN_TIMEOUT = 600
NAMESPACE = "bench"
# A fixed, public bench key: nothing of value is sealed with it.
BENCH_KEYS = '{"bench": "YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXktMzI="}'
ENCRYPTION_ENV = ("FAIRWAY_ENCRYPTION__KEYS", "FAIRWAY_ENCRYPTION__ACTIVE")
# Arguments of each job kind; the payload job carries 1 KiB for the encryption to seal.
KIND_ARGS: dict[str, tuple[str, ...]] = {"noop": (), "one_ms": (), "payload": ("x" * 1024,)}
# bench/app.py's mode for each span processor of --tracing.
# dropped: the simple processor and an exporter that keeps no span (bench/app.py).
TRACED_MODES = {"simple": "traced", "batch": "traced_batch", "dropped": "traced_dropped"}
# The server processes whose CPU the drain's "worker + servers" table adds (when they run here).
SERVER_PROCESSES = ("redis-server", "beam.smp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", nargs="+", default=["redis", "rabbitmq"], choices=["redis", "rabbitmq"])
    parser.add_argument("--shapes", nargs="+", default=["1x8", "2x8"], help="processes x threads")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per throughput run")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--latency-jobs", type=int, default=500)
    parser.add_argument(
        "--tracing",
        nargs="*",
        choices=list(TRACED_MODES),
        help="also run fairway with FAIRWAY_TRACING__ENABLED, every span kept in memory by the SDK's in-memory"
        " exporter behind a SimpleSpanProcessor (simple, the default) or a BatchSpanProcessor (batch), or"
        " none kept (dropped: the simple processor and an exporter that keeps nothing): ratio traced / fairway",
    )
    parser.add_argument(
        "--encryption", action="store_true", help="also fairway with payload encryption: ratio encrypted / fairway"
    )
    args = parser.parse_args()
    # --tracing alone is the SimpleSpanProcessor, the only mode before the batch one was added.
    tracing = [] if args.tracing is None else args.tracing or ["simple"]
    extras = [TRACED_MODES[processor] for processor in tracing] + (["encrypted"] if args.encryption else [])
    modes = ("plain", "fairway", *extras)
    kinds = ("noop", "one_ms", "payload") if args.encryption else ("noop", "one_ms")

    print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    rows = []
    cpu_rows = []
    all_cpu_rows = []
    for broker in args.brokers:
        for shape in args.shapes:
            processes, threads = (int(part) for part in shape.split("x"))
            results: dict[tuple[str, str], list[float]] = {}
            cpu: dict[tuple[str, str], list[float]] = {}
            all_cpu: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.repetitions):
                for mode in modes:
                    with worker(broker, mode, processes, threads) as app:
                        for kind in kinds:
                            results.setdefault((mode, kind), []).append(throughput(app, kind, args.jobs))
                            cpu.setdefault((mode, kind), []).append(app.cpu_per_job)
                            all_cpu.setdefault((mode, kind), []).append(app.cpu_per_job + app.servers_per_job)
            for kind in kinds:
                plain = statistics.median(results[("plain", kind)])
                fair = statistics.median(results[("fairway", kind)])
                rows.append(
                    (broker, shape, kind, plain, fair, [statistics.median(results[(mode, kind)]) for mode in extras])
                )
                cpu_rows.append((broker, shape, kind, [min(cpu[(mode, kind)]) * 1e6 for mode in modes]))
                all_cpu_rows.append(
                    (broker, shape, kind, [statistics.median(all_cpu[(mode, kind)]) * 1e6 for mode in modes])
                )
    print()
    extra_head = "".join(f" {mode} jobs/s | {mode} / fairway |" for mode in extras)
    print(f"| broker | shape | job | plain jobs/s | fairway jobs/s | ratio |{extra_head}")
    print(f"|---|---|---|---:|---:|---:|{'---:|---:|' * len(extras)}")
    for broker, shape, kind, plain, fair, others in rows:
        extra = "".join(f" {other:,.0f} | {other / fair:.2f} |" for other in others)
        print(f"| {broker} | {shape} | {kind} | {plain:,.0f} | {fair:,.0f} | {fair / plain:.2f} |{extra}")
    print()
    # The least of the repetitions: CPU time only grows with a busy machine's interference.
    print(f"| broker | shape | job | worker CPU µs/job, least: {' | '.join(modes)} |")
    print(f"|---|---|---|{'---:|' * len(modes)}")
    for broker, shape, kind, per_mode in cpu_rows:
        print(f"| {broker} | {shape} | {kind} | {' | '.join(f'{value:.0f}' for value in per_mode)} |")
    print()
    # Medians: the servers' share moves with what else they serve, so the least would pick the quietest.
    print(f"| broker | shape | job | worker + servers CPU µs/job, median: {' | '.join(modes)} | plain / fairway |")
    print(f"|---|---|---|{'---:|' * (len(modes) + 1)}")
    for broker, shape, kind, per_mode in all_cpu_rows:
        cells = " | ".join(f"{value:.0f}" for value in per_mode)
        print(f"| {broker} | {shape} | {kind} | {cells} | {per_mode[0] / per_mode[1]:.2f} |")
    print()
    print("| broker | mode | p50 enqueue→start ms | p99 ms |")
    print("|---|---|---:|---:|")
    for broker in args.brokers:
        for mode in ("plain", "fairway"):
            with worker(broker, mode, 1, 8) as app:
                p50, p99 = latency(app, args.latency_jobs)
            print(f"| {broker} | {mode} | {p50:.2f} | {p99:.2f} |")


class App:
    """The producer side of bench/app.py, loaded in this process with the same mode as the worker."""

    def __init__(self, env: dict[str, str]) -> None:
        for name in ENCRYPTION_ENV:
            os.environ.pop(name, None)
        os.environ.update(env)
        # The encrypted mode's app installs Dramatiq's global encoder: the next mode starts from JSON.
        dramatiq.set_encoder(JSONEncoder())
        redis_url = env["FAIRWAY_REDIS_URL"]
        sys.path.insert(0, str(ROOT / "bench"))
        for name in [m for m in sys.modules if m == "app"]:
            del sys.modules[name]
        import app  # loaded per mode: it builds its broker at import

        self.module = app
        self.recorder = redis.Redis.from_url(redis_url)
        self.workers: list[psutil.Process] = []
        self.log: Path | None = None
        # The worker processes' CPU seconds per job of the last throughput run: on a busy machine
        # a steadier measure than the rate, and against it the rate shows what waiting cost.
        self.cpu_per_job = 0.0
        # The same for the Redis and RabbitMQ servers of this machine, over the drain.
        self.servers_per_job = 0.0
        self.servers = [p for p in psutil.process_iter(["name"]) if p.info["name"] in SERVER_PROCESSES]

    def worker_cpu(self) -> float:
        """CPU seconds the worker processes have used (user + system), threads included."""
        return _cpu(self.workers)

    def servers_cpu(self) -> float:
        """CPU seconds the local Redis and RabbitMQ servers have used."""
        return _cpu(self.servers)

    @contextmanager
    def stopped(self) -> Iterator[None]:
        # The master's children include fork functions such as the metrics exporter, which
        # exits when another worker's exporter holds its port: only a worker is measured.
        for process in self.workers:
            with suppress(psutil.NoSuchProcess):
                process.suspend()
        try:
            yield
        finally:
            for process in self.workers:
                with suppress(psutil.NoSuchProcess):
                    process.resume()


@contextmanager
def worker(broker: str, mode: str, processes: int, threads: int, redis_url: str = REDIS_URL) -> Iterator[App]:
    env = {
        "FAIRWAY_BROKER": broker,
        "FAIRWAY_REDIS_URL": redis_url,
        "FAIRWAY_STATE_URL": redis_url,
        "BENCH_MODE": mode,
        "FAIRWAY_NAMESPACE": NAMESPACE,
    }
    if mode == "encrypted":
        env.update(zip(ENCRYPTION_ENV, (BENCH_KEYS, "bench"), strict=True))
    app = App(env)
    app.module.broker.flush_all()
    command = [sys.executable, "-m", "dramatiq", "app", "--processes", str(processes), "--threads", str(threads)]
    command += ["--path", str(ROOT / "bench"), "--queues", app.module.QUEUE]
    log = Path(tempfile.gettempdir()) / f"fairway-bench-{broker}-{mode}-{processes}x{threads}.log"
    # A session of its own: were this script's process group orphaned (its shell gone) while the
    # worker is stopped, the kernel would send the whole group SIGHUP, which stops a Dramatiq worker.
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=output, stderr=output, cwd=ROOT, start_new_session=True
        )
    app.log = log
    try:
        throughput(app, "noop", 200)  # warm up: every process connected and consuming
        app.workers = psutil.Process(process.pid).children(recursive=True)
        yield app
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        app.module.broker.flush_all()
        app.module.broker.close()
        # Job status and the rest of the run's state: 10,000 status records per run would stay
        # in the user's Redis until their TTL.
        delete_namespace(app.recorder, NAMESPACE)


def throughput(app: App, kind: str, jobs: int) -> float:
    """Jobs/s the worker drains, the queue filled while its processes were stopped.

    Filling first keeps the producer out of the measure: with publisher confirms (which setup()
    turns on) sending is slower than draining, and a worker fed slower than it drains measures
    the producer. SIGSTOP leaves every connection open, so no broker thinks the worker died.
    The drain ends when the last of ``FINISH_MARKS`` jobs sent after the run's jobs has run (FIFO
    within a level, so every job of the run was taken before): timing until ``join`` returns would
    add join's own idle checks, a second that is the same for both modes and pulls ratios towards 1.
    """
    actor = getattr(app.module, kind)
    app.recorder.delete(app.module.FINISHED_KEY)
    with app.stopped():
        for _ in range(jobs):
            actor.send(*KIND_ARGS[kind])
        for _ in range(FINISH_MARKS):
            app.module.finished.send()
        cpu_before, servers_before = app.worker_cpu(), app.servers_cpu()
        started = time.time()
    while app.recorder.llen(app.module.FINISHED_KEY) < FINISH_MARKS:
        if time.time() - started > DRAIN_TIMEOUT:
            raise RuntimeError(f"{jobs} {kind} jobs not drained in {DRAIN_TIMEOUT} s: see the worker's log {app.log}")
        time.sleep(0.001)
    app.cpu_per_job = (app.worker_cpu() - cpu_before) / (jobs + FINISH_MARKS)
    app.servers_per_job = (app.servers_cpu() - servers_before) / (jobs + FINISH_MARKS)
    ended = max(float(stamp) for stamp in app.recorder.lrange(app.module.FINISHED_KEY, 0, -1))
    app.module.broker.join(app.module.QUEUE, timeout=600_000)
    return jobs / (ended - started)


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def latency(app: App, jobs: int) -> tuple[float, float]:
    app.recorder.delete(app.module.LATENCY_KEY)
    for count in range(1, jobs + 1):
        app.module.probe.send(time.time())
        while app.recorder.llen(app.module.LATENCY_KEY) < count:
            time.sleep(0.0005)
    samples = sorted(float(x) * 1000 for x in app.recorder.lrange(app.module.LATENCY_KEY, 0, -1))
    app.recorder.delete(app.module.LATENCY_KEY)
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


if __name__ == "__main__":
    main()
