"""The quickstart: one actor that counts primes, on the fairway stack.

Run a worker, then the producer (both read the ``FAIRWAY_*`` settings; the embedded Redis by default)::

    dramatiq examples.quickstart          # or: dramatiq dramatiq_fairway.demo.quickstart
    python examples/quickstart.py         # sends 20 jobs, waits, prints the count

The app itself lives in the package (``dramatiq_fairway.demo.quickstart``) so that ``fairway demo``
works from any directory after ``pip install``.
"""

from __future__ import annotations

import time
import uuid

from dramatiq_fairway.demo.quickstart import broker, count_primes, settings, state_store, tally_key

__all__ = ["broker", "count_primes"]

JOBS = 20
SPAN = 10_000


def main(timeout: float = 60.0) -> None:
    run_id = uuid.uuid4().hex
    for job in range(JOBS):
        count_primes.send(job * SPAN, (job + 1) * SPAN, run_id)
    key = tally_key(settings, run_id)
    deadline = time.monotonic() + timeout
    while int(state_store.hget(key, "done") or 0) < JOBS:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"only {int(state_store.hget(key, 'done') or 0)} of {JOBS} jobs done; is a worker running?"
            )
        time.sleep(0.1)
    print(f"{JOBS} jobs done: {int(state_store.hget(key, 'primes') or 0)} primes below {JOBS * SPAN:,}")
    state_store.delete(key)


if __name__ == "__main__":
    main()
