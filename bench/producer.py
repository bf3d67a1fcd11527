"""Producer cost: sends/s of ``send`` and of ``enqueue_many``, fairway against plain Dramatiq, in one run.

    python bench/producer.py                  # Redis and RabbitMQ
    python bench/producer.py --brokers redis --sends 1000 --batched 5000

For each broker, one process sends no-op messages (no worker runs) with:
plain Dramatiq's broker and default middleware (on RabbitMQ with publisher confirms and without),
and the fairway stack (``setup()``; publisher confirms on), every row once per round, in turn, so
that a load that comes and goes on the machine lands on all of them; medians over ``--rounds``.
The single sends of the rows are interleaved within a round, 50 of one row, then 50 of the next:
on a shared virtual machine the rate of a whole row moved by ±20 % from one second to the next.
Single ``send`` runs ``--sends`` messages; ``enqueue_many`` runs ``--batched`` messages in batches
of 100 and of 1,000 (fairway
only: plain Dramatiq has no bulk send). Tenants are spread over 100 names. The table is markdown;
ratios are against plain Dramatiq with confirms (RabbitMQ) and against fairway's own ``send``.
Everything the run created (namespaces, queues) is deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median

import dramatiq
import pika
import redis
from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, xq_name

from dramatiq_fairway import enqueue_many, setup
from dramatiq_fairway.brokers.rabbitmq import FairRabbitmqBroker
from dramatiq_fairway.settings import Settings
from dramatiq_fairway.store import delete_namespace

# BENCH_REDIS_URL: another Redis than the shared one, so two benchmarks can run side by side.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
TENANTS = 100
BATCHES = (100, 1000)
# Single sends per broker before the next broker's turn (``send_rates``).
SLICE = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", nargs="+", default=["redis", "rabbitmq"], choices=["redis", "rabbitmq"])
    parser.add_argument("--sends", type=int, default=2000, help="messages sent one by one per row")
    parser.add_argument("--batched", type=int, default=10_000, help="messages sent with enqueue_many per batch size")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each measuring every row in turn")
    args = parser.parse_args()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"medians of {args.rounds} rounds (each row measured once per round, in turn); [min-max] of the ratios")
    print()
    print("| broker | producer | `send` /s | `enqueue_many` x100 /s | `enqueue_many` x1000 /s | vs plain `send` |")
    print("|---|---|---:|---:|---:|---:|")
    for kind in args.brokers:
        labels = (
            [("plain Dramatiq", True)]
            if kind == "redis"
            else [("plain, confirms", True), ("plain, no confirms", False)]
        )
        with contextlib.ExitStack() as stack:
            plains = [(label, stack.enter_context(plain_broker(kind, confirms=confirms))) for label, confirms in labels]
            fairway = stack.enter_context(fairway_broker(kind))
            plain_rates: dict[str, list[float]] = {label: [] for label, _ in plains}
            singles: list[float] = []
            batched: dict[int, list[float]] = {size: [] for size in BATCHES}
            for _ in range(args.rounds):
                *plain_round, fairway_rate = send_rates([broker for _, broker in plains] + [fairway], args.sends)
                for (label, _), rate in zip(plains, plain_round, strict=True):
                    plain_rates[label].append(rate)
                singles.append(fairway_rate)
                for size in BATCHES:
                    batched[size].append(batch_rate(fairway, args.batched, size))
        baselines = plain_rates[labels[0][0]]
        for label, rates in plain_rates.items():
            print(f"| {kind} | {label} | {median(rates):,.0f} | - | - | {_ratio(rates, baselines)} |")
        cells = " | ".join(f"{median(rates):,.0f} ({_ratio(rates, singles)} `send`)" for rates in batched.values())
        print(f"| {kind} | fairway | {median(singles):,.0f} | {cells} | {_ratio(singles, baselines)} |", flush=True)


def _ratio(rates: list[float], baselines: list[float]) -> str:
    """Median and range of the ratios of ``rates`` to ``baselines`` measured in the same round."""
    ratios = [rate / base for rate, base in zip(rates, baselines, strict=True)]
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}x"
    return f"{median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"


def send_rates(brokers: list[Broker], count: int) -> list[float]:
    """Sends/s of each of ``brokers``, ``count`` sends each, in slices of ``SLICE`` taken in turn
    (the first broker of a slice changing from slice to slice): a load on a shared machine that
    comes and goes within a second lands on every broker alike, not on whichever ran then."""
    sends = [_actor(broker).send_with_options for broker in brokers]
    spent = [0.0] * len(brokers)
    for first in range(0, count, SLICE):
        numbers = range(first, min(first + SLICE, count))
        turn = first // SLICE % len(brokers)
        for index in [*range(turn, len(brokers)), *range(turn)]:
            send = sends[index]
            started = time.perf_counter()
            for n in numbers:
                send(args=(n,), tenant=f"t{n % TENANTS}")
            spent[index] += time.perf_counter() - started
    return [count / seconds for seconds in spent]


def batch_rate(broker: Broker, count: int, size: int) -> float:
    actor = _actor(broker)
    messages = [actor.message_with_options(args=(n,), tenant=f"t{n % TENANTS}") for n in range(count)]
    return _timed(count, lambda: [enqueue_many(messages[i : i + size], broker=broker) for i in range(0, count, size)])


def _actor(broker: Broker) -> dramatiq.Actor[..., None]:
    queue = f"bench_producer_{uuid.uuid4().hex[:8]}"

    def noop(n: int) -> None: ...

    actor = dramatiq.actor(noop, broker=broker, queue_name=queue, actor_name=f"noop_{queue}")
    actor.send(-1)  # connection, declares and script loads out of the timing
    return actor


def _timed(count: int, run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


@contextmanager
def plain_broker(kind: str, *, confirms: bool) -> Iterator[Broker]:
    namespace = f"bench-plain-{uuid.uuid4().hex[:8]}"
    if kind == "redis":
        broker: Broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    else:
        broker = RabbitmqBroker(url=RABBITMQ_URL, confirm_delivery=confirms)
    try:
        yield broker
    finally:
        _clean(broker, namespace)


@contextmanager
def fairway_broker(kind: str) -> Iterator[Broker]:
    namespace = f"bench-producer-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="fw-") as data_dir:
        settings = Settings(  # type: ignore[arg-type]
            broker=kind, namespace=namespace, redis_url=REDIS_URL, state_url=REDIS_URL, data_dir=Path(data_dir)
        )
        broker = setup(settings)
        try:
            yield broker
        finally:
            _clean(broker, namespace)


def _clean(broker: Broker, namespace: str) -> None:
    broker.flush_all()
    if isinstance(broker, RabbitmqBroker):
        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        channel = connection.channel()
        for queue in broker.get_declared_queues():
            names = [queue, dq_name(queue), xq_name(queue)]
            if isinstance(broker, FairRabbitmqBroker):
                names += broker.level_queues(queue) + list(broker.tenant_routes.declared)
            for name in names:
                channel.queue_delete(name)
        connection.close()
    client = redis.Redis.from_url(REDIS_URL)
    delete_namespace(client, namespace)
    client.close()
    broker.close()


if __name__ == "__main__":
    main()
