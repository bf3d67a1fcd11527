"""Fairness of fairway's brokers against stock Dramatiq on the same broker, measured in the same run.

    python bench/fairness.py                      # Redis, the sizes of issue #5 (about a minute)
    python bench/fairness.py --scale 0.1          # a quick look
    python bench/fairness.py --broker rabbitmq    # FairwayRabbitmqBroker against RabbitmqBroker

Redis: each scenario fills a fresh queue on the real Redis (``--redis-url``) with FairRedisBroker
and RedisBroker, then drains it through each broker's own dispatch script (fetch in batches of
``--prefetch``, as a worker does). RabbitMQ (``--rabbitmq-url``): FairwayRabbitmqBroker against
RabbitmqBroker with ``x-max-priority`` 5 and the AMQP priority fairway's ``FairPriority`` gives
each level (stock Dramatiq's best: strict priority); each queue is drained through the broker's
own consumer with ``--prefetch``, keeping ``--prefetch`` messages unacked like a worker with that
many threads running no-op jobs. A message's wait is counted in jobs served before it: multiply
by the mean job time over the number of worker threads to get seconds. Scenarios (issue #5):

  a) noisy neighbour: tenant A enqueues 20,000 jobs, then B-E 200 each; p50/p99 wait of B-E,
     and the same with A absent;
  b) Jain's fairness index of 4 equally backlogged tenants (each enqueued its batch in turn),
     over windows of 100 picks: the worst window;
  c) CRITICAL behind a 100,000-message BATCH backlog: wait in jobs, and enqueue -> fetch in ms
     while a drainer runs;
  d) constant HIGH load with BATCH waiting: the share of picks that served BATCH (rule: 1 in 4);
  e) fetch + ack throughput, no-op jobs, fair / plain (median of 5 alternated runs); and picks/s with 10,000 tenants
     against 4 (the pick cost must not grow with the tenant count);
  f) many-tenant noisy neighbour (issue #20): A enqueues 20,000 jobs, then 1,000 tenants 5 each;
     p99 wait of the small tenants with A present against A absent, and on RabbitMQ the AMQP
     queues and consumers (per worker process) the layout used for it.

On RabbitMQ, (c) measures enqueue -> delivery by the consumer on both brokers, and (e)'s
10,000-tenant row is left out (tenants share ``FAIRWAY_FAIRNESS__RABBITMQ_LANES`` AMQP queues).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from dramatiq import Message
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, xq_name

from dramatiq_fairway.brokers import RABBITMQ_MAX_PRIORITY
from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.brokers.rabbitmq import FairwayRabbitmqBroker
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
    parser.add_argument("--broker", choices=["redis", "rabbitmq"], default="redis")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every message count")
    parser.add_argument("--prefetch", type=int, default=16)
    parser.add_argument("--lanes", type=int, default=4, help="RabbitMQ: AMQP queues per level tenants hash over")
    args = parser.parse_args()
    bench = (
        RabbitBench(args.rabbitmq_url, args.redis_url, args.scale, args.prefetch, args.lanes)
        if args.broker == "rabbitmq"
        else Bench(args.redis_url, args.scale, args.prefetch)
    )
    try:
        rows = [
            *bench.noisy_neighbour(),
            *bench.jain(),
            *bench.critical(),
            *bench.batch_share(),
            *bench.throughput(),
            *bench.many_small_tenants(),
        ]
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
                order = self.drain(broker, jobs, stop=after(len(quiet), lambda job: job[0] != "A"))
                waits[name] = [position for position, job in enumerate(order) if job[0] != "A"]
            rows.append(Row("a noisy neighbour", f"B-E p50 wait, {label}", *fmt(waits, 50), ""))
            rows.append(Row("a noisy neighbour", f"B-E p99 wait, {label}", *fmt(waits, 99), "p99 <= 1.5x A absent"))
        return rows

    def many_small_tenants(self) -> list[Row]:
        small = [(f"s{t}", Priority.NORMAL, i) for t in range(self.n(1_000)) for i in range(5)]
        noisy = [("A", Priority.NORMAL, i) for i in range(self.n(20_000))]
        scenario = "f 1,000 small tenants"
        rows, p99 = [], {}
        for label, jobs in (("with A", noisy + small), ("A absent", small)):
            waits = {}
            for name, broker in self.brokers():
                order = self.drain(broker, jobs, stop=after(len(small), lambda job: job[0] != "A"))
                waits[name] = [position for position, job in enumerate(order) if job[0] != "A"]
                if label == "with A" and (layout := self.layout(broker)):
                    rows.append(Row(scenario, f"AMQP queues | consumers per worker, {name}", layout, ""))
            p99[label] = {name: percentile(values, 99) for name, values in waits.items()}
            rows.append(Row(scenario, f"small p99 wait, {label}", *fmt(waits, 99)))
        ratio = {name: p99["with A"][name] / p99["A absent"][name] for name in p99["with A"]}
        rows.append(Row(scenario, "p99 with A / A absent", *fmt_pair(ratio, "{:.2f}x"), "<= 1.5x"))
        return rows

    def layout(self, broker: Any) -> str:  # noqa: ARG002 (Redis: one list per (level, tenant), no AMQP queues)
        return ""

    def jain(self) -> list[Row]:
        per_tenant = self.n(2_500)
        jobs = [(t, Priority.NORMAL, i) for t in "WXYZ" for i in range(per_tenant)]
        worst = {}
        for name, broker in self.brokers():
            order = self.drain(broker, jobs, limit=4 * per_tenant // 2)
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
            order = self.drain(broker, jobs, stop=after(1, lambda job: job[0] == "urgent"))
            positions[name] = next(p for p, job in enumerate(order) if job[0] == "urgent")
        latency = self.critical_latencies(self.n(100_000))
        return [
            Row("c CRITICAL behind BATCH", "wait of CRITICAL enqueued mid-backlog (jobs)", *fmt_pair(positions, "{}")),
            Row("c CRITICAL behind BATCH", "enqueue -> fetch p99 while draining (ms)", *latency, "< 50 ms"),
        ]

    def batch_share(self) -> list[Row]:
        high = [("h", Priority.HIGH, i) for i in range(self.n(3_000))]
        batch = [("b", Priority.BATCH, i) for i in range(self.n(3_000))]
        shares = {}
        for name, broker in self.brokers():
            order = self.drain(broker, high + batch, limit=len(high))
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
        return [
            Row("e throughput", "fetch + ack msgs/s, no-op jobs", *fmt_pair(rates, "{:.0f}")),
            Row("e throughput", "ratio fair / plain", f"{rates['fair'] / rates['plain']:.2f}", "", ">= 0.80"),
            *self.many_tenants(count),
        ]

    def many_tenants(self, count: int) -> list[Row]:
        picks = {}
        for tenants in (4, 10_000):
            queue = self.queue()
            self.fill(
                self.fair, queue, [(f"t{i % tenants}", Priority(i % 4 + 2), i) for i in range(max(count, tenants * 2))]
            )
            started = time.perf_counter()
            served = self.fetch_all(self.fair, queue, ack=False, batch=1, limit=5_000)
            picks[tenants] = len(served) / (time.perf_counter() - started)
        return [
            Row(
                "e 10,000 tenants",
                "single picks/s: 4 tenants | 10,000 tenants",
                f"{picks[4]:.0f} | {picks[10_000]:.0f}",
                "",
                "same order",
            )
        ]

    def critical_latencies(self, backlog: int) -> tuple[str, str]:
        return f"{self.critical_latency(backlog):.1f}", "n/a"

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

    def brokers(self) -> list[tuple[str, Any]]:
        return [("fair", self.fair), ("plain", self.plain)]

    def queue(self) -> str:
        return f"bench_{uuid.uuid4().hex[:8]}"

    def drain(
        self, broker: Any, jobs: list[Job], *, limit: int | None = None, stop: Callable[[Job], bool] | None = None
    ) -> list[Job]:
        """The order ``broker`` serves ``jobs`` in, up to ``limit`` jobs or the one ``stop`` is true of."""
        queue = self.last_queue = self.queue()
        self.fill(broker, queue, jobs)
        order = self.fetch_all(broker, queue, ack=False, limit=limit, stop=stop)
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
        self,
        broker: RedisBroker,
        queue: str,
        *,
        ack: bool,
        batch: int | None = None,
        limit: int | None = None,
        stop: Callable[[Job], bool] | None = None,
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
            if stop is not None and any(stop(job) for job in order[-len(pairs) :]):
                break
        return order[:limit]

    def cleanup(self) -> None:
        self.fair.close()
        for pattern in (f"{self.namespace}*", "{" + self.namespace + "*"):
            keys = list(self.client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 1000):
                self.client.delete(*keys[start : start + 1000])


class RabbitBench(Bench):
    """The same scenarios on RabbitMQ: FairwayRabbitmqBroker against RabbitmqBroker (x-max-priority 5)."""

    def __init__(self, url: str, redis_url: str, scale: float, prefetch: int, lanes: int) -> None:
        self.namespace = f"fwbench-{uuid.uuid4().hex[:8]}"
        self.scale = scale
        self.prefetch = prefetch
        settings = Settings(broker="rabbitmq", rabbitmq_url=url, state_url=redis_url, namespace=self.namespace)
        # No middleware and no publisher confirms on either side: the bench measures the brokers.
        self.fair = FairwayRabbitmqBroker(
            url=url, max_priority=RABBITMQ_MAX_PRIORITY, settings=settings, lanes=lanes, middleware=[]
        )
        self.plain = RabbitmqBroker(url=url, max_priority=RABBITMQ_MAX_PRIORITY, middleware=[])
        self.filled: dict[str, int] = {}

    def many_tenants(self, count: int) -> list[Row]:  # noqa: ARG002 (tenants share the lanes' AMQP queues)
        return []

    def layout(self, broker: Any) -> str:
        """AMQP queues behind the last drained queue, and so consumers per worker process (one per queue)."""
        if not isinstance(broker, FairwayRabbitmqBroker):
            return "1 | 1"
        own = [name for name in broker.tenant_routes.declared if name.startswith(f"{self.last_queue}.T")]
        count = len(broker.level_queues(self.last_queue)) + 1 + len(own)
        return f"{count} | {count}"

    def critical_latencies(self, backlog: int) -> tuple[str, str]:
        fair, plain = (f"{self.critical_latency_of(broker, backlog):.1f}" for _, broker in self.brokers())
        return fair, plain

    def critical_latency_of(self, broker: RabbitmqBroker, backlog: int) -> float:
        """p99 ms from publishing a CRITICAL job to its delivery by a consumer draining a BATCH backlog."""
        queue = self.queue()
        self.fill(broker, queue, [(f"t{i % 50}", Priority.BATCH, i) for i in range(backlog)])
        sent: dict[int, float] = {}
        latencies: list[float] = []
        stop = threading.Event()

        def drain() -> None:
            consumer = broker.consume(queue, prefetch=self.prefetch, timeout=100)
            try:
                while not stop.is_set():
                    proxy = next(consumer)
                    if proxy is None:
                        continue
                    tenant, _level, index = proxy.args
                    if tenant == "urgent":
                        latencies.append((time.perf_counter() - sent[index]) * 1000)
                    consumer.ack(proxy)
            finally:
                consumer.close()

        thread = threading.Thread(target=drain)
        thread.start()
        for index in range(100):
            sent[index] = time.perf_counter()
            self.fill(broker, queue, [("urgent", Priority.CRITICAL, index)], flush=False)
            time.sleep(0.005)
        deadline = time.monotonic() + 10
        while len(latencies) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        thread.join()
        broker.flush(queue)
        return percentile(latencies, 99)

    def fill(self, broker: RabbitmqBroker, queue: str, jobs: Iterable[Job], flush: bool = True) -> None:  # type: ignore[override]
        if flush:
            broker.declare_queue(queue, ensure=True)
            broker.flush(queue)
            self.filled[queue] = 0
        for tenant, level, index in jobs:
            self.filled[queue] += 1
            options = {"priority_level": int(level), "tenant": tenant}
            # What FairPriority gives each level on RabbitMQ: CRITICAL -> 5 ... BATCH -> 1.
            options["broker_priority"] = RABBITMQ_MAX_PRIORITY + Priority.CRITICAL - level
            broker.enqueue(
                Message(
                    queue_name=queue, actor_name="noop", args=(tenant, int(level), index), kwargs={}, options=options
                )
            )

    def fetch_all(  # type: ignore[override]
        self,
        broker: RabbitmqBroker,
        queue: str,
        *,
        ack: bool,  # noqa: ARG002 (every message is acked: RabbitMQ redelivers the others)
        batch: int | None = None,
        limit: int | None = None,
        stop: Callable[[Job], bool] | None = None,
    ) -> list[Job]:
        """Serve ``queue`` like a worker with ``--prefetch`` threads: that many unacked at a time."""
        total = self.filled[queue]
        consumer = broker.consume(queue, prefetch=batch or self.prefetch, timeout=200)
        running: deque[Any] = deque()
        order: list[Job] = []
        try:
            while len(order) < min(total, limit or total):
                if len(running) >= (batch or self.prefetch):
                    consumer.ack(running.popleft())
                proxy = next(consumer)
                if proxy is None:
                    if running:
                        consumer.ack(running.popleft())
                    continue
                running.append(proxy)
                order.append(tuple(proxy.args))  # type: ignore[arg-type]
                if stop is not None and stop(order[-1]):
                    break
            for proxy in running:
                consumer.ack(proxy)
        finally:
            consumer.close()
        return order

    def cleanup(self) -> None:
        channel = self.plain.channel
        for broker in (self.fair, self.plain):
            for queue in broker.get_declared_queues():
                extra = broker.level_queues(queue) if isinstance(broker, FairwayRabbitmqBroker) else []
                for name in (queue, dq_name(queue), xq_name(queue), *extra):
                    channel.queue_delete(name)
        for name in self.fair.tenant_routes.declared:
            channel.queue_delete(name)
        self.fair.state_store.delete(self.fair.registry_key)
        self.fair.close()
        self.plain.close()


def after(count: int, match: Callable[[Job], bool]) -> Callable[[Job], bool]:
    """A predicate true of the ``count``-th job that ``match`` is true of."""
    seen = 0

    def done(job: Job) -> bool:
        nonlocal seen
        seen += match(job)
        return seen >= count

    return done


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
