"""Throughput, wait percentiles and jobs served per tenant, from the workers' Prometheus exporter.

The dashboard process runs no jobs, so its own metrics are empty. It reads the exporter the
``dramatiq`` command starts (``FAIRWAY_METRICS__HOST:PORT``, see ``middlewares/metrics.py``) and
keeps the samples it took over the last hour in memory: figures are the difference between the
newest and the oldest sample of that window (counters only grow; a worker restart resets them,
and the newest value alone is then used). Until a second sample exists the figures are the
totals since the workers started, and say so. When the exporter stops answering, the last
figures are still shown, with their age and the endpoint that did not answer.

The design plans per-minute buckets kept in Redis by the finish script; when they exist, this
module is what reads them instead.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from ..settings import Settings

WINDOW = 3600.0
# Samples closer together than this add nothing but memory (the overview refreshes every few s).
MIN_INTERVAL = 5.0
SCRAPE_TIMEOUT = 1.0

K = TypeVar("K")


@dataclass(frozen=True)
class Sample:
    """Counter values of one scrape, summed over the labels the dashboard does not show."""

    at: float
    outcomes: dict[str, float] = field(default_factory=dict)
    wait_buckets: dict[float, float] = field(default_factory=dict)
    served: dict[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True)
class Figures:
    """What the pages show. ``seconds`` is the window covered; 0 means totals since the workers started.
    ``age``: seconds since the newest sample was scraped (the figures are that old)."""

    seconds: float
    outcomes: dict[str, float]
    wait_p50: float | None
    wait_p95: float | None
    served: dict[tuple[str, str], float]
    age: float = field(default=0.0, compare=False)

    @property
    def finished(self) -> float:
        return sum(count for outcome, count in self.outcomes.items() if outcome != "delayed_by_breaker")

    @property
    def per_minute(self) -> float | None:
        return self.finished * 60 / self.seconds if self.seconds else None


def parse(text: str, at: float) -> Sample:
    """One :class:`Sample` from the Prometheus text format."""
    sample = Sample(at=at)
    for family in text_string_to_metric_families(text):
        for name, labels, value in ((s.name, s.labels, s.value) for s in family.samples):
            if name == "fairway_messages_total":
                _add(sample.outcomes, labels["outcome"], value)
            elif name == "fairway_message_wait_seconds_bucket":
                _add(sample.wait_buckets, float(labels["le"]), value)
            elif name == "fairway_tenant_served_total":
                _add(sample.served, (labels["queue"], labels["tenant"]), value)
    return sample


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated inside its bucket as Prometheus does."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


class MetricsWindow:
    """The samples of the last hour, taken from the workers' exporter when a page asks.

    ``fetch`` returns the exporter's text (the default reads :attr:`url`); ``clock`` is monotonic
    seconds. Both are parameters so the window's arithmetic can be tested without waiting.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[], str] | None = None,
    ) -> None:
        host = settings.metrics.host
        # A wildcard bind is reached on loopback from the same host.
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{settings.metrics.port}/metrics"
        self.clock = clock
        self.fetch = fetch or self._http_get
        self.samples: deque[Sample] = deque()
        self.error: str | None = None
        self._tried_at = float("-inf")
        self._lock = threading.Lock()

    def figures(self) -> Figures | None:
        """The window's figures, after a fresh scrape if the last try is old; None when none answered."""
        with self._lock:
            now = self.clock()
            # At most one try per interval, answered or not: pages must not wait on a dead exporter.
            if now - self._tried_at >= MIN_INTERVAL:
                self._tried_at = now
                self._scrape(now)
            while self.samples and now - self.samples[0].at > WINDOW:
                self.samples.popleft()
            if not self.samples:
                return None
            return replace(_difference(self.samples[0], self.samples[-1]), age=now - self.samples[-1].at)

    def _scrape(self, now: float) -> None:
        try:
            text = self.fetch()
        except OSError as error:
            self.error = (
                f"no metrics exporter answered at {self.url} ({type(error).__name__}): workers' metrics unreadable"
            )
            return
        self.error = None
        self.samples.append(parse(text, now))

    def _http_get(self) -> str:
        with urllib.request.urlopen(self.url, timeout=SCRAPE_TIMEOUT) as reply:
            return str(reply.read().decode())


def _difference(old: Sample, new: Sample) -> Figures:
    if old is new:
        outcomes, buckets, served = new.outcomes, new.wait_buckets, new.served
    else:
        outcomes = _delta(old.outcomes, new.outcomes)
        buckets = _delta(old.wait_buckets, new.wait_buckets)
        served = _delta(old.served, new.served)
    return Figures(
        seconds=new.at - old.at,
        outcomes=outcomes,
        wait_p50=quantile(0.5, buckets),
        wait_p95=quantile(0.95, buckets),
        served=served,
    )


def _delta(old: dict[K, float], new: dict[K, float]) -> dict[K, float]:
    # A counter that went down belongs to a restarted worker: its new value is all that is known.
    return {key: value - old.get(key, 0.0) if value >= old.get(key, 0.0) else value for key, value in new.items()}


def _add(totals: dict[K, float], key: K, value: float) -> None:
    totals[key] = totals.get(key, 0.0) + value
