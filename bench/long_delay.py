"""Park queues and hops a delayed message costs on RabbitMQ (brokers/rabbitmq_delay.py), for a range
of delays: pure arithmetic over the bucket ladder, no server.

    python bench/long_delay.py [--horizon-ms 30000]

Each hop is one publish (confirmed) and one ack by the delay queue's consumer, plus one
dead-lettering by RabbitMQ; "held" is how long a worker then holds the message unacked (at most
the horizon, which must stay below RabbitMQ's ``consumer_timeout``).
"""

from __future__ import annotations

import argparse

from dramatiq_fairway.brokers.rabbitmq_delay import DEFAULT_DELAY_HORIZON_MS, PARK_BUCKETS_MS, park_hops

DELAYS_MS = [
    10_000,
    45_000,
    5 * 60_000,
    30 * 60_000,
    2 * 3_600_000,
    12 * 3_600_000,
    24 * 3_600_000,
    7 * 24 * 3_600_000,
]


def _duration(ms: int) -> str:
    seconds = ms / 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon-ms", type=int, default=DEFAULT_DELAY_HORIZON_MS)
    horizon = parser.parse_args().horizon_ms
    print(f"horizon {_duration(horizon)}; ladder of {len(PARK_BUCKETS_MS)} buckets, the park queues per queue at most")
    print(f"{'delay':>8}  {'hops':>4}  {'queues':>6}  {'held':>8}  buckets (s)")
    for delay in DELAYS_MS:
        hops = park_hops(delay, horizon)
        held = delay - sum(hops)
        buckets = ", ".join(f"{bucket // 1000}" for bucket in hops)
        print(f"{_duration(delay):>8}  {len(hops):>4}  {len(set(hops)):>6}  {_duration(held):>8}  {buckets}")


if __name__ == "__main__":
    main()
