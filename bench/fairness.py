"""Fairness of FairRedisBroker against plain Dramatiq's RedisBroker, measured in the same run.

    python bench/fairness.py                      # the sizes of issue #5 (about a minute)
    python bench/fairness.py --scale 0.1          # a quick look

Each scenario fills a fresh queue on the real Redis (``--redis-url``) with both brokers, then
drains it through each broker's own dispatch script (fetch in batches of ``--prefetch``, as a
worker does). A message's wait is counted in jobs served before it: multiply by the mean job
time over the number of worker threads to get seconds. Scenarios (issue #5):

  a) noisy neighbour: tenant A enqueues 20,000 jobs, then B-E 200 each; p50/p99 wait of B-E,
     and the same with A absent;
  b) Jain's fairness index of 4 equally backlogged tenants (each enqueued its batch in turn),
     over windows of 100 picks: the worst window;
  c) CRITICAL behind a 100,000-message BATCH backlog: wait in jobs, and enqueue -> fetch in ms
     while a drainer runs;
  d) constant HIGH load with BATCH waiting: the share of picks that served BATCH (rule: 1 in 4);
  e) fetch + ack throughput, no-op jobs, fair / plain (median of 5 alternated runs); and picks/s with 10,000 tenants
     against 4 (the pick cost must not grow with the tenant count).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import Settings

Job = tuple[str, int, int]  # tenant, level, index
REPETITIONS = 5


@dataclass
class Row:
    scenario: str
    metric: str
    fair: str
    plain: str
    target: str = ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every message count")
    parser.add_argument("--prefetch", type=int, default=16)
    args = parser.parse_args()
    bench = Bench(args.redis_url, args.scale, args.prefetch)
    try:
        rows = [*bench.noisy_neighbour(), *bench.jain(), *bench.critical(), *bench.batch_share(), *bench.throughput()]
    finally:
        bench.cleanup()
    print_table(rows)


class Bench:
    def __init__(self, url: str, scale: float, prefetch: int) -> None:
        self.namespace = f"fwbench-{uuid.uuid4().hex[:8]}"
        self.client = redis.Redis.from_url(url)
        self.scale = scale
        self.prefetch = prefetch
        settings = Settings(broker="redis", redis_url=url, namespace=self.namespace)
        self.fair = FairRedisBroker(client=self.client, namespace=self.namespace, settings=settings)
        self.plain = RedisBroker(client=self.client, namespace=self.namespace + "-plain", maintenance_chance=0)

    def n(self, count: int) -> int:
        return max(1, int(count * self.scale))

    # Scenarios.

    def noisy_neighbour(self) -> list[Row]:
        quiet = [(t, Priority.NORMAL, i) for i in range(self.n(200)) for t in "BCDE"]
        noisy = [("A", Priority.NORMAL, i) for i in range(self.n(20_000))]
        rows = []
        for label, jobs in (("with A", noisy + quiet), ("A absent", quiet)):
            waits = {}
            for name, broker in self.brokers():
                order = self.drain(broker, jobs)
                waits[name] = [position for position, job in enumerate(order) if job[0] != "A"]
            rows.append(Row("a noisy neighbour", f"B-E p50 wait, {label}", *fmt(waits, 50), ""))
            rows.append(Row("a noisy neighbour", f"B-E p99 wait, {label}", *fmt(waits, 99), "p99 <= 1.5x A absent"))
        return rows

    def jain(self) -> list[Row]:
        per_tenant = self.n(2_500)
        jobs = [(t, Priority.NORMAL, i) for t in "WXYZ" for i in range(per_tenant)]
        worst = {}
        for name, broker in self.brokers():
            order = self.drain(broker, jobs)[: 4 * per_tenant // 2]
            windows = [order[i : i + 100] for i in range(0, len(order) - 99, 100)]
            worst[name] = min(jain_index(Counter(job[0] for job in window), "WXYZ") for window in windows)
        return [
            Row("b 4 backlogged tenants", "Jain index, worst 100-pick window", *fmt_pair(worst, "{:.3f}"), ">= 0.99")
        ]

    def critical(self) -> list[Row]:
        backlog = [(f"t{i % 50}", Priority.BATCH, i) for i in range(self.n(100_000))]
        half = len(backlog) // 2
        jobs = [*backlog[:half], ("urgent", Priority.CRITICAL, 0), *backlog[half:]]
        positions = {}
        for name, broker in self.brokers():
            order = self.drain(broker, jobs)
            positions[name] = next(p for p, job in enumerate(order) if job[0] == "urgent")
        latency = self.critical_latency(self.n(100_000))
        return [
            Row("c CRITICAL behind BATCH", "wait of CRITICAL enqueued mid-backlog (jobs)", *fmt_pair(positions, "{}")),
            Row(
                "c CRITICAL behind BATCH",
                "enqueue -> fetch p99 while draining (ms)",
                f"{latency:.1f}",
                "n/a",
                "< 50 ms",
            ),
        ]

    def batch_share(self) -> list[Row]:
        high = [("h", Priority.HIGH, i) for i in range(self.n(3_000))]
        batch = [("b", Priority.BATCH, i) for i in range(self.n(3_000))]
        shares = {}
        for name, broker in self.brokers():
            order = self.drain(broker, high + batch)[: len(high)]
            shares[name] = sum(job[0] == "b" for job in order) / len(order)
        return [
            Row(
                "d constant HIGH load",
                "share of picks serving BATCH",
                *fmt_pair(shares, "{:.3f}"),
                "1/4 by the rule, > 0",
            )
        ]

    def throughput(self) -> list[Row]:
        count = self.n(10_000)
        samples: dict[str, list[float]] = {"fair": [], "plain": []}
        # Alternate the order over repetitions so a noisy neighbour on the host hits both alike.
        for repetition in range(REPETITIONS):
            brokers = self.brokers()
            for name, broker in brokers if repetition % 2 == 0 else brokers[::-1]:
                queue = self.queue()
                self.fill(broker, queue, [(f"t{i % 4}", Priority.NORMAL, i) for i in range(count)])
                started = time.perf_counter()
                served = self.fetch_all(broker, queue, ack=True)
                samples[name].append(len(served) / (time.perf_counter() - started))
                broker.flush(queue)
        rates = {name: statistics.median(values) for name, values in samples.items()}
        rows = [
            Row("e throughput", "fetch + ack msgs/s, no-op jobs", *fmt_pair(rates, "{:.0f}")),
            Row("e throughput", "ratio fair / plain", f"{rates['fair'] / rates['plain']:.2f}", "", ">= 0.80"),
        ]
        picks = {}
        for tenants in (4, 10_000):
            queue = self.queue()
            self.fill(
                self.fair, queue, [(f"t{i % tenants}", Priority(i % 4 + 2), i) for i in range(max(count, tenants * 2))]
            )
            started = time.perf_counter()
            served = self.fetch_all(self.fair, queue, ack=False, batch=1, limit=5_000)
            picks[tenants] = len(served) / (time.perf_counter() - started)
        rows.append(
            Row(
                "e 10,000 tenants",
                "single picks/s: 4 tenants | 10,000 tenants",
                f"{picks[4]:.0f} | {picks[10_000]:.0f}",
                "",
                "same order",
            )
        )
        return rows

    def critical_latency(self, backlog: int) -> float:
        queue = self.queue()
        self.fill(self.fair, queue, [(f"t{i % 50}", Priority.BATCH, i) for i in range(backlog)])
        sent: dict[int, float] = {}
        latencies: list[float] = []
        stop = threading.Event()
        drainer = FairRedisBroker(client=self.client, namespace=self.namespace, settings=self.fair.settings)

        def drain() -> None:
            while not stop.is_set():
                for _, body in drainer.fetch(queue, self.prefetch):
                    tenant, _level, index = Message.decode(body).args
                    if tenant == "urgent":
                        latencies.append((time.perf_counter() - sent[index]) * 1000)

        thread = threading.Thread(target=drain)
        thread.start()
        for index in range(100):
            sent[index] = time.perf_counter()
            self.fill(self.fair, queue, [("urgent", Priority.CRITICAL, index)], flush=False)
            time.sleep(0.005)
        deadline = time.monotonic() + 10
        while len(latencies) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        thread.join()
        self.fair.flush(queue)
        return percentile(latencies, 99)

    # Plumbing.

    def brokers(self) -> list[tuple[str, RedisBroker]]:
        return [("fair", self.fair), ("plain", self.plain)]

    def queue(self) -> str:
        return f"bench_{uuid.uuid4().hex[:8]}"

    def drain(self, broker: RedisBroker, jobs: list[Job]) -> list[Job]:
        queue = self.queue()
        self.fill(broker, queue, jobs)
        order = self.fetch_all(broker, queue, ack=False)
        broker.flush(queue)
        return order

    def fill(self, broker: RedisBroker, queue: str, jobs: Iterable[Job], flush: bool = True) -> None:
        messages = [
            Message(
                queue_name=queue,
                actor_name="noop",
                args=job,
                kwargs={},
                options={"priority_level": int(job[1]), "tenant": job[0]},
            )
            for job in jobs
        ]
        if flush:
            broker.flush(queue)
        broker.declare_queue(queue)
        if isinstance(broker, FairRedisBroker):
            for start in range(0, len(messages), 1000):
                broker.enqueue_many(messages[start : start + 1000])
        else:
            for message in messages:
                broker.enqueue(message)

    def fetch_all(
        self, broker: RedisBroker, queue: str, *, ack: bool, batch: int | None = None, limit: int | None = None
    ) -> list[Job]:
        fetch, settle = fetchers(broker, queue)
        order: list[Job] = []
        while limit is None or len(order) < limit:
            pairs = fetch(batch or self.prefetch)
            if not pairs:
                break
            if ack:
                settle([rid for rid, _ in pairs])
            order += [tuple(Message.decode(body).args) for _, body in pairs]  # type: ignore[misc]
        return order

    def cleanup(self) -> None:
        self.fair.close()
        for pattern in (f"{self.namespace}*", "{" + self.namespace + "*"):
            keys = list(self.client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 1000):
                self.client.delete(*keys[start : start + 1000])


def fetchers(
    broker: RedisBroker, queue: str
) -> tuple[Callable[[int], list[tuple[str, bytes]]], Callable[[list[str]], None]]:
    """Fetch (id, body) pairs and ack ids through the broker's own dispatch script."""
    if isinstance(broker, FairRedisBroker):

        def settle_fair(rids: list[str]) -> None:
            for rid in rids:  # one ack per message, as a worker thread does
                broker.settle(queue, "ack", [rid])

        return (lambda n: broker.fetch(queue, n)), settle_fair

    def fetch(n: int) -> list[tuple[str, bytes]]:
        bodies = [body for body in broker.do_fetch(queue, n) if body]
        return [(Message.decode(body).options["redis_message_id"], body) for body in bodies]

    def settle(rids: list[str]) -> None:
        for rid in rids:
            broker.do_ack(queue, rid)

    return fetch, settle


def jain_index(counts: Counter[str], tenants: str) -> float:
    values = [counts[t] for t in tenants]
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 0.0


def percentile(values: list[float] | list[int], q: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))])


def fmt(waits: dict[str, list[int]], q: int) -> tuple[str, str]:
    return f"{percentile(waits['fair'], q):.0f}", f"{percentile(waits['plain'], q):.0f}"


def fmt_pair(values: dict[str, float] | dict[str, int], spec: str) -> tuple[str, str]:
    return spec.format(values["fair"]), spec.format(values["plain"])


def print_table(rows: list[Row]) -> None:
    headers = ("scenario", "metric", "fair", "plain", "target")
    cells = [headers, *((r.scenario, r.metric, r.fair, r.plain, r.target) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*headers))
    print(line.format(*("-" * w for w in widths)))
    for row in cells[1:]:
        print(line.format(*row))
    print("\nWaits count the jobs served before the message (x mean job time / worker threads = seconds).")


if __name__ == "__main__":
    main()
