"""The circuit breaker end to end: the real ``dramatiq`` command, 4 processes x 4 threads
(``tests/support/breaker_app.py``), calling an HTTP dependency on 127.0.0.1 that the test breaks and
repairs, on Redis and on RabbitMQ as the broker (the state store is the shared Redis either way).

What is asserted is counted by the dependency itself, each call with its arrival time, against the
breaker's own times in the state store (Redis ``TIME``, the same host clock): bounds on how many
calls reach a dependency, never how fast anything ran. 16 worker threads may each have one call in
flight when the breaker opens, hence the ``+ 16`` slack.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dramatiq
import pytest
import redis
from dramatiq import Broker

from dramatiq_fairway import cli
from dramatiq_fairway.middlewares.breaker import CACHE_TTL
from dramatiq_fairway.settings import BreakerPolicy, Settings
from dramatiq_fairway.store.breakers import BreakerState, RedisBreakerStore
from dramatiq_fairway.store.dead_letters import DeadLetterStore

from ..support.helpers import dramatiq_command, free_port, settings_env, wait_for

pytestmark = pytest.mark.chaos

BREAKER = "dep"
PROCESSES, THREADS = 4, 4
IN_FLIGHT = PROCESSES * THREADS
POLICY = BreakerPolicy(open_duration=2)


@dataclass
class Call:
    at: float
    job: int
    status: int


@dataclass
class Dependency:
    """An HTTP dependency that records every call. Answers 200, or 503 once ``down`` (which it
    sets itself at call number ``fail_from``), or 429 with ``Retry-After`` at call ``limit_at``."""

    fail_from: int | None = None
    limit_at: int | None = None
    retry_after: int = 3
    down: bool = False
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, job: int) -> int:
        with self.lock:
            number = len(self.calls) + 1
            if self.fail_from is not None and number >= self.fail_from:
                self.down, self.fail_from = True, None
            status = 503 if self.down else 429 if number == self.limit_at else 200
            self.calls.append(Call(time.time(), job, status))
            return status

    def between(self, start: float, end: float) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if start <= call.at < end]

    def first(self, status: int) -> Call:
        with self.lock:
            return next(call for call in self.calls if call.status == status)


@pytest.fixture
def dependency() -> Iterator[tuple[Dependency, str]]:
    state = Dependency()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            job = int(parse_qs(urlsplit(self.path).query)["job"][0])
            status = state.answer(job)
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", str(state.retry_after))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@contextmanager
def running_workers(
    broker: Broker,
    settings: Settings,
    queue_name: str,
    short_tmp: Path,
    dependency: tuple[Dependency, str],
    *,
    processes: int,
    threads: int,
    policy: dict[str, Any],
    env: dict[str, str],
) -> Iterator[Callable[[int], None]]:
    """Starts the ``dramatiq`` command on the test's queue; the yielded function enqueues jobs."""

    @dramatiq.actor(broker=broker, queue_name=queue_name, breaker=BREAKER)
    def call_dependency(n: int) -> None:
        raise AssertionError("runs in the worker processes only")

    full_env = {
        **settings_env(settings),
        "FAIRWAY_TEST_QUEUE": queue_name,
        "FAIRWAY_TEST_BREAKER": BREAKER,
        "FAIRWAY_TEST_URL": dependency[1],
        "FAIRWAY_BREAKER__KEYS": json.dumps({BREAKER: policy}),
        "FAIRWAY_METRICS__PORT": str(free_port()),
        **env,
    }

    def send(count: int) -> None:
        for n in range(count):
            call_dependency.send(n)

    log = short_tmp / "worker.log"
    with dramatiq_command(
        "tests.support.breaker_app", full_env, processes=processes, threads=threads, queues=[queue_name], log_file=log
    ):
        yield send


@pytest.fixture
def workers(
    broker: Broker, settings: Settings, queue_name: str, short_tmp: Path, dependency: tuple[Dependency, str]
) -> Iterator[Callable[[int], None]]:
    """4 processes x 4 threads, each holding no more jobs than it runs."""
    # A worker process holds no more jobs than it runs: these tests bound what crosses processes.
    # (What a process had in hand when the breaker opened is held back when a thread takes it:
    # test_with_dramatiqs_prefetch_each_thread_runs_at_most_one_job_after_the_breaker_opened.)
    env = {"FAIRWAY_FAIRNESS__PREFETCH": "0", "dramatiq_queue_prefetch": str(THREADS)}
    with running_workers(
        broker,
        settings,
        queue_name,
        short_tmp,
        dependency,
        processes=PROCESSES,
        threads=THREADS,
        policy={"open_duration": POLICY.open_duration},
        env=env,
    ) as send:
        yield send


def done(state_client: redis.Redis, settings: Settings) -> set[int]:
    return {int(n) for n in state_client.smembers(f"{settings.namespace}:test:done")}


def watch(store: RedisBreakerStore, until: Callable[[list[BreakerState]], bool], timeout: float) -> list[BreakerState]:
    """Every distinct state of the breaker seen while polling, until ``until(seen)``."""
    seen: list[BreakerState] = []

    def changed() -> bool:
        state = store.get(BREAKER)
        if state is not None and (not seen or (state.state, state.retry_at) != (seen[-1].state, seen[-1].retry_at)):
            seen.append(state)
        return until(seen)

    wait_for(changed, timeout=timeout, interval=0.02)
    return seen


def test_an_outage_opens_the_breaker_for_every_worker_and_no_job_is_lost(
    workers: Callable[[int], None],
    dependency: tuple[Dependency, str],
    settings: Settings,
    state_client: redis.Redis,
) -> None:
    server, _url = dependency
    jobs = 300
    server.fail_from = 61
    workers(jobs)
    store = RedisBreakerStore.from_settings(settings)
    seen = watch(store, lambda s: sum(state.state == "open" for state in s) >= 2, timeout=120)
    first, second = (state for state in seen if state.state == "open")
    server.down = False
    wait_for(lambda: len(done(state_client, settings)) == jobs, timeout=180)

    onset = server.first(503).at
    assert first.retry_at is not None
    assert second.retry_at is not None
    # Up to the opening: the failures that opened it and the calls in flight then; then none until
    # the open duration passed.
    assert len(server.between(onset, first.retry_at)) <= POLICY.minimum_calls + IN_FLIGHT
    # Half-open: at most half_open_max_calls trials, which failed and opened it for twice as long.
    trials = server.between(first.retry_at, second.retry_at)
    assert 1 <= len(trials) <= POLICY.half_open_max_calls
    assert {call.status for call in trials} == {503}
    assert second.retry_at - second.opened_at == pytest.approx(2 * POLICY.open_duration)  # type: ignore[operator]
    # Recovered: it closed and every job completed; none was dead-lettered.
    wait_for(lambda: store.get(BREAKER).state == "closed")  # type: ignore[union-attr]
    assert done(state_client, settings) == set(range(jobs))
    assert DeadLetterStore(settings).list() == []


def test_rate_limited_stops_every_worker_and_the_cli_forces_the_breaker_open(
    workers: Callable[[int], None],
    dependency: tuple[Dependency, str],
    settings: Settings,
    state_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _url = dependency
    jobs = 200
    server.limit_at = 41
    workers(jobs)
    store = RedisBreakerStore.from_settings(settings)
    seen = watch(store, lambda s: any(state.state == "open" for state in s), timeout=120)
    (opened,) = (state for state in seen if state.state == "open")
    wait_for(lambda: len(done(state_client, settings)) == jobs, timeout=120)
    assert opened.opened_at is not None
    assert opened.retry_at is not None
    assert opened.opened_at >= server.first(429).at - 0.001  # the store keeps milliseconds
    assert opened.retry_at - opened.opened_at == pytest.approx(server.retry_after)
    # Once the worker that got the 429 reported it, only the calls already in flight reached the
    # dependency until retry_after passed. (Between the 429 and its report the other workers run
    # on: the report waits for the after-hooks that run before the breaker's, ClassifiedRetries
    # re-enqueueing the job among them.)
    assert len(server.between(opened.opened_at, opened.retry_at)) <= IN_FLIGHT
    assert DeadLetterStore(settings).list() == []

    # `fairway breakers open dep`: every worker holds the jobs, none reaches the dependency.
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    assert cli.main(["breakers", "open", BREAKER]) == 0
    forced_at = time.monotonic()
    # Workers trust a closed breaker for CACHE_TTL since they last heard of it, which was before
    # the command or from its reply. That expiry happens inside the worker processes, with no
    # event to poll for: wait for the deadline the rule gives, not a guessed time.
    time.sleep(max(0.0, forced_at + CACHE_TTL - time.monotonic()))
    calls_before = len(server.calls)
    more = 100
    state_client.delete(f"{settings.namespace}:test:done")
    workers(more)
    # "No call for a while" has no event either: it must outlast open_duration (after which an
    # unforced breaker would let trials through), with margin for the holds' round trips.
    time.sleep(3 * POLICY.open_duration)
    assert len(server.calls) == calls_before
    assert done(state_client, settings) == set()
    assert cli.main(["breakers", "close", BREAKER]) == 0
    wait_for(lambda: len(done(state_client, settings)) == more, timeout=120)
    assert DeadLetterStore(settings).list() == []


PREFETCH_THREADS = 8
PREFETCH_POLICY = BreakerPolicy(minimum_calls=5, open_duration=2)


@pytest.fixture
def prefetching_workers(
    broker: Broker, settings: Settings, queue_name: str, short_tmp: Path, dependency: tuple[Dependency, str]
) -> Iterator[Callable[[int], None]]:
    """One process of 8 threads with the default prefetch: it holds twice as many jobs as it runs."""
    with running_workers(
        broker,
        settings,
        queue_name,
        short_tmp,
        dependency,
        processes=1,
        threads=PREFETCH_THREADS,
        policy={"open_duration": PREFETCH_POLICY.open_duration, "minimum_calls": PREFETCH_POLICY.minimum_calls},
        env={},
    ) as send:
        yield send


def test_with_dramatiqs_prefetch_each_thread_runs_at_most_one_job_after_the_breaker_opened(
    prefetching_workers: Callable[[int], None],
    dependency: tuple[Dependency, str],
    settings: Settings,
    state_client: redis.Redis,
) -> None:
    server, _url = dependency
    jobs = 60
    server.fail_from = 1
    prefetching_workers(jobs)
    store = RedisBreakerStore.from_settings(settings)
    seen = watch(store, lambda s: any(state.state == "open" for state in s), timeout=120)
    opened = next(state for state in seen if state.state == "open")
    assert opened.retry_at is not None
    retry_at = opened.retry_at
    wait_for(lambda: time.time() > retry_at, timeout=2 * PREFETCH_POLICY.open_duration)
    # The failures that opened it and the jobs the threads were running then; none of the jobs
    # the process had fetched besides (Dramatiq's prefetch, 2 x threads).
    assert len(server.between(0, retry_at)) <= PREFETCH_POLICY.minimum_calls + PREFETCH_THREADS
    server.down = False
    wait_for(lambda: len(done(state_client, settings)) == jobs, timeout=180)

    # Held jobs kept their retries: each used one per failed call it made, none for its waits.
    failed_calls = Counter(call.job for call in server.calls if call.status == 503)
    succeeded = f"{settings.namespace}:test:succeeded"
    wait_for(lambda: state_client.hlen(succeeded) == jobs)
    retries = {int(n): int(used) for n, used in state_client.hgetall(succeeded).items()}
    assert retries == {n: failed_calls[n] for n in range(jobs)}
    # Callbacks saw one failure per failed call: a hold is not an outcome.
    failed = f"{settings.namespace}:test:failed"
    wait_for(lambda: int(state_client.get(failed) or 0) >= sum(failed_calls.values()))
    assert int(state_client.get(failed) or 0) == sum(failed_calls.values())
    assert DeadLetterStore(settings).list() == []
