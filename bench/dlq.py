"""The dead-letter store at scale: load N records, then time stats, filtered lists, export and retention.

    .venv/bin/python bench/dlq.py                     # 1,000,000 records (a few minutes)
    .venv/bin/python bench/dlq.py --records 20000     # a quick smoke run

Everything runs against a throwaway ``redis-server`` (Debian's, on a free loopback port, no
persistence) that the script starts and stops itself, so the shared Redis is never filled.

Records are realistic: spread over 30 days, 6 queues, 14 actors, 200 bugs (each one fingerprint,
computed by the real ``fingerprint()``), 1,000 tenants with a skewed (Zipf-like) share of the
failures, tracebacks of a few hundred bytes. They go in through ``DeadLetterStore.add_many``, which
runs the store's own write script, so indexes, counters and the ``max_records`` cap are the real
ones.

Queries are timed through the Python API the CLI verbs call (median and p95 over
``--repetitions`` runs, after a warm-up), and each CLI verb once more as a real ``fairway dlq ...``
process (end to end: interpreter start, imports, query, JSON output). Export runs in a fresh
process that reports its own peak RSS after exporting about a tenth of the records and again
after exporting all of them: streaming export keeps the two equal. Last, retention: writes at the
``max_records`` cap (each evicts the oldest record) and ``purge_expired`` with nothing to drop
and with a day's worth to drop.
"""

from __future__ import annotations

import argparse
import bisect
import math
import multiprocessing
import os
import platform
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from dramatiq_fairway.failures.fingerprint import fingerprint
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store.dead_letters import DeadLetter, DeadLetterFilter, DeadLetterStore

SYSTEM_REDIS = "/usr/bin/redis-server"
FAIRWAY = Path(sys.executable).with_name("fairway")
NAMESPACE = "fairway-bench"
SPREAD = timedelta(days=29, hours=12)  # inside the 30-day retention, so nothing expires by itself
QUEUES = {
    "papers": ["fetch_paper", "summarize", "index_citations"],
    "photos": ["resize", "detect_faces", "upload_thumbnail"],
    "fl": ["train_round", "aggregate"],
    "emails": ["send_digest", "send_receipt"],
    "reports": ["render_pdf", "export_sheet"],
    "default": ["cleanup"],
}
ERRORS = [
    ("TimeoutError", "request to {host} timed out after {n}s"),
    ("ConnectionError", "connection to {host}:{port} refused"),
    ("KeyError", "'{field}'"),
    ("ValueError", "invalid literal for int() with base 10: '{field}'"),
    ("httpx.HTTPStatusError", "Server error '503 Service Unavailable' for url 'https://{host}/v1/{n}'"),
    ("dramatiq_fairway.errors.PermanentError", "paper {n} has no PDF"),
    ("dramatiq_fairway.errors.RateLimited", "rate limited by {host}, retry after {n}s"),
    ("PIL.UnidentifiedImageError", "cannot identify image file '/tmp/{field}.jpg'"),
    ("OSError", "[Errno 28] No space left on device: '/var/tmp/{field}'"),
    ("dramatiq.middleware.time_limit.TimeLimitExceeded", "time limit of {n} ms exceeded"),
    ("sqlalchemy.exc.OperationalError", "deadlock detected on relation {n}"),
    ("AssertionError", "expected {n} rows, got {port}"),
]
REASONS = ["retries_exhausted"] * 6 + ["permanent"] * 3 + ["rejected", "too_large", "held_too_long"]
BUGS = 200
TENANTS = 1000


@dataclass(frozen=True)
class Bug:
    queue: str
    actor: str
    error_type: str
    template: str
    traceback: str
    fingerprint: str
    reason: str


@dataclass
class Row:
    operation: str
    samples: list[float]
    target_ms: float | None = None
    cli_ms: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    @property
    def verdict(self) -> str:
        """The median against the target (p95 is shown beside it: a busy machine adds outliers)."""
        if self.target_ms is None:
            return "-"
        return "[green]pass[/]" if self.median < self.target_ms else "[red]FAIL[/]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records to load (default 1,000,000)")
    parser.add_argument("--repetitions", type=int, default=20, help="timed runs per query")
    parser.add_argument("--batch", type=int, default=1000, help="script calls per pipeline while loading")
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    if args.records < 1000:
        parser.error("--records must be at least 1000")

    console = Console(width=None if sys.stdout.isatty() else 130)
    console.print(
        f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="fw-bench-dlq-") as tmp, throwaway_redis(Path(tmp)) as url:
        settings = bench_settings(url, tmp, args.records)
        store = DeadLetterStore(settings)
        client = redis.Redis.from_url(url)
        now = datetime.now(UTC)
        dataset = Dataset(random.Random(args.seed), now)
        empty_memory = int(client.info("memory")["used_memory"])

        started = time.perf_counter()
        loaded = store.add_many(dataset.records(args.records, console), batch=args.batch)
        load_seconds = time.perf_counter() - started
        if loaded != args.records or store.count() != args.records:
            raise SystemExit(f"loaded {loaded} records, store holds {store.count()}; expected {args.records}")
        memory = client.info("memory")
        per_record = (int(memory["used_memory"]) - empty_memory) / args.records
        console.print(
            f"loaded {args.records:,} records in {load_seconds:.1f} s ({args.records / load_seconds:,.0f}/s); "
            f"Redis used_memory {memory['used_memory_human']}, {per_record:,.0f} B per record "
            f"(≈ {per_record * 1_000_000 / 2**30:.2f} GiB per 1M)"
        )

        # The CLI runs see the throwaway server and nothing of the caller's own fairway settings.
        env = {
            **{name: value for name, value in os.environ.items() if not name.startswith("FAIRWAY_")},
            "FAIRWAY_BROKER": "redis",
            "FAIRWAY_REDIS_URL": url,
            "FAIRWAY_STATE_URL": url,
            "FAIRWAY_NAMESPACE": NAMESPACE,
            "FAIRWAY_DATA_DIR": tmp,
            "FAIRWAY_DLQ__MAX_RECORDS": str(args.records),
        }
        rows = query_rows(store, dataset, env, args.repetitions)
        export = measure_export((url, tmp, args.records), env, console)
        rows += retention_rows(store, dataset, args.repetitions, console)
        print_table(console, rows, args.records)
        console.print(f"result: median against target; load average at the end {os.getloadavg()[0]:.1f}")
        console.print(
            f"export --format csv, Python API in a fresh process: baseline peak RSS {export.baseline_mb:.0f} MB; "
            f"after {export.partial:,} records {export.partial_mb:.0f} MB; after all {export.total:,} records "
            f"{export.total_mb:.0f} MB ({export.total_seconds:.1f} s, {export.total / export.total_seconds:,.0f} "
            f"records/s, {export.file_mb:.0f} MB of CSV)"
        )
        console.print(
            f"export --format csv, real CLI (`fairway dlq export --format csv -o FILE`): {export.cli_seconds:.1f} s, "
            f"peak RSS {export.cli_mb:.0f} MB"
        )
        client.close()


def bench_settings(url: str, data_dir: str, records: int) -> Settings:
    """The throwaway server as broker and state store, capped at exactly the records loaded."""
    return Settings(
        broker="redis",
        redis_url=url,
        state_url=url,
        namespace=NAMESPACE,
        data_dir=Path(data_dir),
        dlq={"max_records": records},
    )


class Dataset:
    """Deterministic, realistic dead letters: which bug, tenant and time each record gets."""

    def __init__(self, rng: random.Random, now: datetime) -> None:
        self.rng = rng
        self.now = now
        self.bugs = [self._bug(n) for n in range(BUGS)]
        self.tenants = [f"tenant-{n:04}" for n in range(TENANTS)]
        # A few bugs and tenants account for most failures, as in production.
        self.bug_weights = _cumulative([1 / (n + 1) ** 0.9 for n in range(BUGS)])
        self.tenant_weights = _cumulative([1 / (n + 1) ** 0.8 for n in range(TENANTS)])

    def _bug(self, n: int) -> Bug:
        queue = self.rng.choice(list(QUEUES))
        actor = self.rng.choice(QUEUES[queue])
        error_type, template = ERRORS[n % len(ERRORS)]
        module = f"myapp/tasks/{queue}.py"
        helper = f"_step_{n}"
        trace = (
            "Traceback (most recent call last):\n"
            '  File "/usr/lib/python3/dist-packages/dramatiq/worker.py", line 519, in process_message\n'
            "    res = actor(*message.args, **message.kwargs)\n"
            f'  File "/srv/app/{module}", line {40 + n}, in {actor}\n'
            f"    result = {helper}(payload)\n"
            f'  File "/srv/app/{module}", line {120 + n}, in {helper}\n'
            "    return client.call(payload)\n"
            f"{error_type}: {template}\n"
        )
        message = template.format(host="api.example.org", port=443, n=n, field=f"field_{n}")
        return Bug(
            queue=queue,
            actor=actor,
            error_type=error_type,
            template=template,
            traceback=trace,
            fingerprint=fingerprint(error_type, message, trace),
            reason=REASONS[n % len(REASONS)],
        )

    def pick_bug(self, popularity: float) -> Bug:
        """The bug at this quantile of the failures (0 = the most frequent one)."""
        return self.bugs[bisect.bisect_left(self.bug_weights, popularity * self.bug_weights[-1])]

    def pick_tenant(self, popularity: float) -> str:
        return self.tenants[bisect.bisect_left(self.tenant_weights, popularity * self.tenant_weights[-1])]

    def records(self, count: int, console: Console, newest: datetime | None = None) -> Iterator[DeadLetter]:
        """``count`` records over the 30 days before ``newest`` (default: now); progress every 10%."""
        newest = newest or self.now
        step = max(1, count // 10)
        started = time.perf_counter()
        for n in range(1, count + 1):
            yield self.record(newest - SPREAD * self.rng.random())
            if n % step == 0 and n < count:
                rate = n / (time.perf_counter() - started)
                console.print(f"  loading: {n:,} / {count:,} ({rate:,.0f} records/s)", highlight=False)

    def record(self, failed_at: datetime) -> DeadLetter:
        rng = self.rng
        bug = self.pick_bug(rng.random())
        tenant = self.pick_tenant(rng.random())
        number = rng.randrange(1, 10**6)
        message = bug.template.format(host="api.example.org", port=rng.randrange(1024, 65536), n=number, field="x")
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        args = [number, f"doc-{rng.randrange(10**9):09}"]
        kwargs = {"user_id": tenant, "password": "[REDACTED]"} if number % 10 == 0 else {"user_id": tenant}
        options = {"tenant": tenant, "priority_level": "NORMAL", "max_retries": 5, "retries": 5}
        enqueued_at = failed_at - timedelta(seconds=rng.randrange(1, 3600))
        return DeadLetter(
            id=message_id,
            queue=bug.queue,
            actor=bug.actor,
            args=args,
            kwargs=kwargs,
            options=options,
            tenant=tenant,
            error_type=bug.error_type,
            error_message=message,
            traceback=bug.traceback,
            classification="permanent" if bug.reason == "permanent" else "transient",
            retries=5,
            fingerprint=bug.fingerprint,
            enqueued_at=enqueued_at,
            failed_at=failed_at,
            reason=bug.reason,
            raw={
                "queue_name": bug.queue,
                "actor_name": bug.actor,
                "args": args,
                "kwargs": kwargs,
                "options": options,
                "message_id": message_id,
                "message_timestamp": int(enqueued_at.timestamp() * 1000),
            },
            redacted_fields=["kwargs.password"] if "password" in kwargs else [],
        )


def query_rows(store: DeadLetterStore, dataset: Dataset, env: dict[str, str], repetitions: int) -> list[Row]:
    """The read paths of ``dlq stats`` and ``dlq list``, through the API and once through the CLI."""
    # A bug and a tenant of middling frequency: neither the biggest index nor a nearly empty one.
    bug = dataset.pick_bug(0.5)
    tenant = dataset.pick_tenant(0.5)
    week, day = timedelta(days=7), timedelta(days=1)

    def since(delta: timedelta) -> datetime:
        return datetime.now(UTC) - delta

    cases: list[tuple[str, Callable[[], object], list[str], float | None]] = [
        (
            "stats --by fingerprint --since 7d",
            lambda: store.stats(by="fingerprint", since=week),
            ["stats", "--by", "fingerprint", "--since", "7d"],
            100,
        ),
        (
            "stats --by tenant --since 7d",
            lambda: store.stats(by="tenant", since=week),
            ["stats", "--by", "tenant", "--since", "7d"],
            None,
        ),
        (
            "list --fingerprint F --limit 50",
            lambda: store.list(DeadLetterFilter(fingerprint=bug.fingerprint), limit=50),
            ["list", "--fingerprint", bug.fingerprint, "--limit", "50"],
            50,
        ),
        (
            "list --tenant T --limit 50",
            lambda: store.list(DeadLetterFilter(tenant=tenant), limit=50),
            ["list", "--tenant", tenant, "--limit", "50"],
            50,
        ),
        (
            "list --queue Q --since 1d --limit 50",
            lambda: store.list(DeadLetterFilter(queue=bug.queue, since=since(day)), limit=50),
            ["list", "--queue", bug.queue, "--since", "1d", "--limit", "50"],
            50,
        ),
        (
            "list --tenant T --error-type E --limit 50",
            lambda: store.list(DeadLetterFilter(tenant=tenant, error_type=bug.error_type), limit=50),
            ["list", "--tenant", tenant, "--error-type", bug.error_type, "--limit", "50"],
            50,
        ),
        (
            "list --limit 50 (no filter)",
            lambda: store.list(limit=50),
            ["list", "--limit", "50"],
            50,
        ),
    ]
    rows = []
    for name, call, argv, target in cases:
        samples = timed(call, repetitions)
        started = time.perf_counter()
        subprocess.run([str(FAIRWAY), "dlq", *argv, "--json"], env=env, check=True, stdout=subprocess.DEVNULL)
        rows.append(Row(name, samples, target, (time.perf_counter() - started) * 1000))
    return rows


@dataclass(frozen=True)
class ExportResult:
    baseline_mb: float
    partial: int
    partial_mb: float
    total: int
    total_mb: float
    total_seconds: float
    file_mb: float
    cli_seconds: float
    cli_mb: float


def measure_export(where: tuple[str, str, int], env: dict[str, str], console: Console) -> ExportResult:
    """CSV export of about a tenth of the records, then of all, in a fresh process; then the real CLI."""
    console.print("exporting (Python API, fresh process) ...", highlight=False)
    context = multiprocessing.get_context("spawn")  # a fork would count the parent's pages as the child's
    with context.Pool(1) as pool:
        report: dict[str, float] = pool.apply(_export_in_child, (*where, str(Path(where[1]) / "api.csv")))
    console.print("exporting (real CLI) ...", highlight=False)
    target = Path(where[1]) / "cli.csv"
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(FAIRWAY), "dlq", "export", "--format", "csv", "-o", str(target), "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    cli_seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"fairway dlq export exited {process.returncode}")
    return ExportResult(
        baseline_mb=report["baseline_mb"],
        partial=int(report["partial"]),
        partial_mb=report["partial_mb"],
        total=int(report["total"]),
        total_mb=report["total_mb"],
        total_seconds=report["total_seconds"],
        file_mb=report["file_mb"],
        cli_seconds=cli_seconds,
        cli_mb=usage.ru_maxrss / 1024,
    )


def _export_in_child(url: str, data_dir: str, records: int, path: str) -> dict[str, float]:
    """Runs in a spawned process: its own peak RSS before, after a partial and after a full export."""
    store = DeadLetterStore(bench_settings(url, data_dir, records))
    baseline = _peak_rss_mb()
    with open(path, "w", encoding="utf-8", newline="") as out:
        partial = store.export(out, "csv", DeadLetterFilter(since=datetime.now(UTC) - timedelta(days=3)))
    partial_mb = _peak_rss_mb()
    started = time.perf_counter()
    with open(path, "w", encoding="utf-8", newline="") as out:
        total = store.export(out, "csv")
    seconds = time.perf_counter() - started
    return {
        "baseline_mb": baseline,
        "partial": partial,
        "partial_mb": partial_mb,
        "total": total,
        "total_mb": _peak_rss_mb(),
        "total_seconds": seconds,
        "file_mb": os.path.getsize(path) / 2**20,
    }


def retention_rows(store: DeadLetterStore, dataset: Dataset, repetitions: int, console: Console) -> list[Row]:
    """Writes at the ``max_records`` cap, and ``purge_expired`` with nothing and with a day to drop."""
    client = store.client
    time_key = store.prefix + "time"
    cap = store.settings.dlq.max_records
    # 1% of the records (at most 1,000): the purge below must still find a day's worth to drop.
    writes = max(repetitions, min(1000, cap // 100))
    oldest = [member.decode() for member in client.zrange(time_key, 0, writes - 1)]
    newer = dataset.now + timedelta(minutes=1)

    def add_one() -> None:
        store.add(dataset.record(newer))

    rows = [Row("add at the max_records cap (evicts the oldest)", timed(add_one, repetitions, warmup=0))]
    store.add_many(dataset.record(newer) for _ in range(writes - repetitions))
    evicted = sum(1 for record_id in oldest if client.exists(store.prefix + f"rec:{record_id}") == 0)
    if store.count() != cap or evicted != writes:
        raise SystemExit(f"max_records broken: {store.count():,} records (cap {cap:,}), {evicted} of {writes} evicted")
    console.print(
        f"max_records: {writes:,} writes at the cap kept {cap:,} records and evicted exactly the {writes:,} oldest"
    )

    rows.append(Row("purge_expired, nothing expired", timed(store.purge_expired, repetitions)))
    # A day later, the oldest day's records are past the 30-day retention.
    later = DeadLetterStore(store.settings, client=client, clock=lambda: time.time() + 86_400)
    started = time.perf_counter()
    removed = later.purge_expired()
    seconds = time.perf_counter() - started
    console.print(
        f"purge_expired a day later: removed {removed:,} of {cap:,} records in {seconds * 1000:,.0f} ms "
        f"({removed / max(seconds, 1e-9):,.0f} records/s; the cost follows what is removed, not the store size)"
    )
    rows.append(Row(f"purge_expired a day later ({removed:,} removed)", [seconds * 1000]))
    return rows


def print_table(console: Console, rows: list[Row], records: int) -> None:
    table = Table(title=f"dead-letter store, {records:,} records (Python API; CLI = one real `fairway dlq` run)")
    table.add_column("operation")
    for column in ("median ms", "p95 ms", "target ms", "result", "CLI end-to-end ms"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row.operation,
            f"{row.median:.1f}",
            f"{row.p95:.1f}",
            "-" if row.target_ms is None else f"< {row.target_ms:.0f}",
            row.verdict,
            "-" if row.cli_ms is None else f"{row.cli_ms:.0f}",
        )
    console.print(table)


def timed(call: Callable[[], object], repetitions: int, warmup: int = 2) -> list[float]:
    """Milliseconds per call over ``repetitions`` runs, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


@contextmanager
def throwaway_redis(directory: Path) -> Iterator[str]:
    """Debian's redis-server on a free loopback port, without persistence; yields its URL."""
    if not Path(SYSTEM_REDIS).exists():
        raise SystemExit(f"{SYSTEM_REDIS} not found (apt-get install redis-server)")
    port = _free_port()
    options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no", "dir": str(directory)}
    command = [SYSTEM_REDIS, *(arg for name, value in options.items() for arg in (f"--{name}", value))]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for weight in weights:
        total += weight
        out.append(total)
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
