"""Run it: ``dramatiq examples.quickstart`` from the repository root (or ``fairway demo``).

Send work from Python::

    from examples.quickstart import count_primes
    count_primes.send(0, 100_000, "my-run")

The app itself lives in the package (``dramatiq_fairway.quickstart``) so that ``fairway demo``
works from any directory after ``pip install``.
"""

from dramatiq_fairway.quickstart import broker, count_primes

__all__ = ["broker", "count_primes"]
