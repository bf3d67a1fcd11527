"""CircuitBreaker: the middleware's decisions with an injected clock (StubBroker, pure logic), then
jobs held back and released on a real broker, and the ``fairway breakers`` verbs.

Holding needs fairway's consumer (FairRedisBroker, FairwayRabbitmqBroker: what ``setup()``
builds); the real-broker tests run on both. The state store is the real shared Redis, namespaced
per test. The 4 x 4 ``dramatiq`` command runs are in ``test_breaker_e2e.py``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Broker, Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message
from dramatiq.middleware import CurrentMessage

from dramatiq_fairway import cli
from dramatiq_fairway.brokers.consumer import HELD_SINCE
from dramatiq_fairway.cli import breakers as breakers_cli
from dramatiq_fairway.errors import ConfigError, PermanentError, RateLimited, TransientError
from dramatiq_fairway.middlewares.breaker import (
    BREAKER_HELD_SINCE,
    CACHE_TTL,
    BreakerOptionError,
    CircuitBreaker,
    HeldTooLong,
)
from dramatiq_fairway.middlewares.metrics import Metrics
from dramatiq_fairway.settings import BreakerSettings, Settings, load_settings
from dramatiq_fairway.store.breakers import MemoryBreakerStore, RedisBreakerStore, StoreUnavailable
from dramatiq_fairway.store.dead_letters import DeadLetterStore

from ..conftest import REDIS_URL
from ..support.helpers import settings_env, wait_for

T0 = 1_700_000_000.0
POLICY = BreakerSettings(
    minimum_calls=2, window_size=4, open_duration=10, half_open_max_calls=2, open_duration_factor=2, max_hold=3600
)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class CountingStore(MemoryBreakerStore):
    """The in-memory store, counting calls: what reaches the shared store on a job's path."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.calls: list[str] = []

    def admit(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("admit")
        return super().admit(*args, **kwargs)

    def record(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("record")
        return super().record(*args, **kwargs)


class UnreachableStore(MemoryBreakerStore):
    def admit(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("connection refused")

    def record(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("connection refused")


class Stack:
    """A StubBroker with only the CircuitBreaker, an actor guarded by ``breaker="dep"`` and one unguarded."""

    def __init__(self, store: MemoryBreakerStore, clock: Clock, breaker: BreakerSettings = POLICY) -> None:
        self.clock = clock
        self.store = store
        self.middleware = CircuitBreaker(settings=Settings(breaker=breaker), store=store, clock=clock)
        self.broker = StubBroker(middleware=[self.middleware])
        self.guarded = dramatiq.actor(lambda: None, actor_name="guarded", broker=self.broker, breaker="dep")
        self.free = dramatiq.actor(lambda: None, actor_name="free", broker=self.broker)

    def message(self, **options: Any) -> Message[Any]:
        return self.guarded.message_with_options(**options)

    def hold(self, message: Message[Any]) -> int | None:
        return self.middleware.hold(self.broker, message)

    def run(self, message: Message[Any], exception: BaseException | None = None) -> MessageProxy:
        proxy = MessageProxy(message)
        self.middleware.before_process_message(self.broker, proxy)
        self.middleware.after_process_message(self.broker, proxy, exception=exception)
        return proxy


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def stack(clock: Clock) -> Stack:
    return Stack(CountingStore(clock), clock)


# Pure logic: keys, counting, caching, holding (StubBroker, injected clock).


def test_jobs_without_a_breaker_option_never_touch_the_store(stack: Stack) -> None:
    message = stack.free.message()
    assert stack.hold(message) is None
    stack.run(message, TransientError("down"))
    assert stack.store.calls == []  # type: ignore[attr-defined]
    assert stack.store.list() == []


def test_breaker_key_fills_in_the_tenant_and_finds_the_templates_policy(clock: Clock) -> None:
    settings = BreakerSettings(minimum_calls=50, keys={"api:{tenant}": {"minimum_calls": 1}})
    stack = Stack(CountingStore(clock), clock, settings)
    stack.run(stack.message(breaker="api:{tenant}", tenant="acme"), TransientError("down"))
    stack.run(stack.message(breaker="api:{tenant}"), TransientError("down"))
    states = {state.key: state.state for state in stack.store.list()}
    assert states == {"api:acme": "open", "api:default": "open"}


def test_a_message_option_overrides_the_actors_key(stack: Stack) -> None:
    stack.run(stack.message(breaker="other"), TransientError("down"))
    assert [state.key for state in stack.store.list()] == ["other"]


def test_a_breaker_option_that_is_not_a_string_is_refused(stack: Stack) -> None:
    with pytest.raises(BreakerOptionError, match="breaker must be a string"):
        dramatiq.actor(lambda: None, actor_name="bad", broker=stack.broker, breaker=True)
    with pytest.raises(BreakerOptionError):
        stack.guarded.send_with_options(breaker=3)


def test_only_transient_and_rate_limited_outcomes_count_as_failures(stack: Stack) -> None:
    for exception in (PermanentError("bad payload"), ValueError("bug"), dramatiq.middleware.Shutdown()):
        stack.run(stack.message(), exception)
    stack.middleware.before_worker_shutdown(stack.broker, None)
    assert stack.store.get("dep") is None
    stack.run(stack.message(), ConnectionError("refused"))
    state = stack.store.get("dep")
    assert state is not None
    assert (state.failures, state.calls) == (1, 1)


def test_a_closed_breaker_costs_nothing_at_start_and_one_call_at_the_end(clock: Clock) -> None:
    stack = Stack(CountingStore(clock), clock, POLICY.model_copy(update={"window_size": 100}))
    calls: list[str] = stack.store.calls  # type: ignore[attr-defined]
    for _ in range(50):
        message = stack.message()
        assert stack.hold(message) is None
        stack.run(message)
        clock.now += 0.1
    # One read to learn the state; after that every job's report refreshes the cache, so starting
    # a job costs no call while jobs flow.
    assert calls == ["admit"] + ["record"] * 50
    assert stack.store.get("dep").calls == 50  # type: ignore[union-attr]
    clock.now += CACHE_TTL
    assert stack.hold(stack.message()) is None
    # An idle process asks again.
    assert calls[-1] == "admit"


class BlockingStore(CountingStore):
    """Holds the first ``record`` until released, as a slow round trip would."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sent: list[str] = []

    def record(self, key: str, outcomes: str, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(outcomes)
        if len(self.sent) == 1:
            self.entered.set()
            assert self.release.wait(10)
        return super().record(key, outcomes, *args, **kwargs)


def test_outcomes_of_other_threads_join_the_call_in_flight(clock: Clock) -> None:
    store = BlockingStore(clock)
    stack = Stack(store, clock, POLICY.model_copy(update={"window_size": 100, "minimum_calls": 100}))
    first = threading.Thread(target=stack.run, args=(stack.message(),))
    first.start()
    assert store.entered.wait(10)
    # While the first report is in flight, successes of other threads queue without a call...
    for _ in range(3):
        stack.run(stack.message())
    assert store.sent == ["s"]
    # ...but a failure never waits.
    stack.run(stack.message(), TransientError("down"))
    assert store.sent == ["s", "sssf"]
    stack.run(stack.message())
    store.release.set()
    first.join(10)
    # The first thread, once answered, sends what was queued meanwhile.
    assert store.sent == ["s", "sssf", "s"]
    assert stack.store.get("dep").calls == 6  # type: ignore[union-attr]


def test_a_failure_is_sent_at_once_and_its_reply_opens_the_breaker_for_this_worker(stack: Stack) -> None:
    stack.run(stack.message())
    stack.run(stack.message(), TransientError("down"))
    assert stack.store.get("dep").state == "open"  # type: ignore[union-attr]
    calls_before = len(stack.store.calls)  # type: ignore[attr-defined]
    delay = stack.hold(stack.message())
    assert delay is not None
    assert 10_000 <= delay <= 10_000 + 1_000 + 250
    assert len(stack.store.calls) == calls_before  # type: ignore[attr-defined]  # answered from the cache


class LateReplyStore(CountingStore):
    """Runs the first ``record`` at once but holds its reply until released, as a thread that the
    OS did not schedule for a moment would."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.recorded = threading.Event()
        self.release = threading.Event()

    def record(self, *args: Any, **kwargs: Any) -> Any:
        reply = super().record(*args, **kwargs)
        if not self.recorded.is_set():
            self.recorded.set()
            assert self.release.wait(10)
        return reply


def test_an_older_reply_arriving_last_does_not_reopen_the_cache_to_jobs(clock: Clock) -> None:
    store = LateReplyStore(clock)
    stack = MetricsStack(store, clock)
    first = threading.Thread(target=stack.run, args=(stack.message(), TransientError("down")))
    first.start()
    assert store.recorded.wait(10)
    # The second failure opens the breaker while the first thread still holds its "closed" reply.
    stack.run(stack.message(), TransientError("down"))
    store.release.set()
    first.join(10)
    assert store.get("dep").state == "open"  # type: ignore[union-attr]
    calls_before = len(store.calls)
    assert stack.hold(stack.message()) is not None
    assert len(store.calls) == calls_before  # held from the cache, which kept the newer reply
    assert stack.sample("fairway_breaker_state", key="dep") == 2
    assert stack.sample("fairway_breaker_transitions_total", key="dep", to="open") == 1


def test_rate_limited_opens_for_retry_after_then_trials_run(stack: Stack, clock: Clock) -> None:
    stack.run(stack.message(), RateLimited(retry_after=3))
    delay = stack.hold(stack.message())
    assert delay is not None
    assert 3_000 <= delay <= 3_000 + 300 + 250
    clock.now += 3
    trials = [stack.message() for _ in range(3)]
    assert [stack.hold(m) is None for m in trials] == [True, True, False]
    for trial in trials[:2]:
        stack.run(trial)
    assert stack.store.get("dep").state == "closed"  # type: ignore[union-attr]
    assert stack.hold(trials[2]) is None


def test_a_skipped_trial_gives_its_slot_back(stack: Stack, clock: Clock) -> None:
    stack.run(stack.message(), RateLimited(retry_after=1))
    clock.now += 1
    first, second, third = (stack.message() for _ in range(3))
    assert stack.hold(first) is None
    assert stack.hold(second) is None
    assert stack.hold(third) is not None
    stack.middleware.after_skip_message(stack.broker, MessageProxy(first))
    clock.now += 2  # past the cache
    assert stack.hold(third) is None


def test_a_job_held_longer_than_max_hold_is_failed_not_held(stack: Stack, clock: Clock) -> None:
    stack.store.force_open("dep", now=T0)
    recent = stack.message(**{BREAKER_HELD_SINCE: int((clock.now - 60) * 1000)})
    assert stack.hold(recent) is not None
    stale = stack.message(**{BREAKER_HELD_SINCE: int((clock.now - 3601) * 1000)})
    assert stack.hold(stale) is None
    proxy = MessageProxy(stale)
    with pytest.raises(HeldTooLong, match="held back by breaker 'dep'"):
        stack.middleware.before_process_message(stack.broker, proxy)
    assert proxy.failed
    assert proxy.options["dead_letter_reason"] == "held_too_long"


def test_only_the_breakers_own_holds_count_toward_max_hold(stack: Stack, clock: Clock) -> None:
    stack.store.force_open("dep", now=T0)
    # Held for a day by a paused queue (the consumer's HELD_SINCE), never by the breaker.
    paused = stack.message(**{HELD_SINCE: int((clock.now - 86_400) * 1000)})
    assert stack.hold(paused) is not None
    # The held copy carries when the breaker first held it back.
    assert paused.options[BREAKER_HELD_SINCE] == T0 * 1000
    clock.now += 3000
    assert stack.hold(paused) is not None
    assert paused.options[BREAKER_HELD_SINCE] == T0 * 1000
    stack.store.close("dep", now=clock.now)
    clock.now += CACHE_TTL
    # Let through: a later hold is timed afresh.
    assert stack.hold(paused) is None
    assert BREAKER_HELD_SINCE not in paused.options


class MetricsStack(Stack):
    """A Stack whose broker also has the Metrics middleware, read back from its registry."""

    def __init__(self, store: MemoryBreakerStore, clock: Clock) -> None:
        super().__init__(store, clock)
        self.metrics = Metrics(settings=Settings())
        self.broker.add_middleware(self.metrics)

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def test_transitions_and_held_jobs_reach_the_metrics(clock: Clock) -> None:
    stack = MetricsStack(CountingStore(clock), clock)
    stack.run(stack.message())
    assert stack.sample("fairway_breaker_state", key="dep") == 0
    for _ in range(2):
        stack.run(stack.message(), TransientError("down"))
    assert stack.sample("fairway_breaker_state", key="dep") == 2
    assert stack.sample("fairway_breaker_transitions_total", key="dep", to="open") == 1
    for _ in range(3):
        assert stack.hold(stack.message()) is not None
    held = {"queue": "default", "actor": "guarded", "outcome": "delayed_by_breaker"}
    assert stack.sample("fairway_messages_total", **held) == 3
    clock.now += POLICY.open_duration
    trial = stack.message()
    assert stack.hold(trial) is None
    assert stack.sample("fairway_breaker_state", key="dep") == 1
    assert stack.sample("fairway_breaker_transitions_total", key="dep", to="half_open") == 1
    # Another process (here: the store directly, as the CLI) closes it: this process's view changes,
    # but the transition is not this process's to count.
    stack.store.close("dep", now=clock.now)
    stack.run(trial)
    assert stack.sample("fairway_breaker_state", key="dep") == 0
    assert stack.sample("fairway_breaker_transitions_total", key="dep", to="closed") == 0


def test_breakers_fall_back_to_per_process_state_when_the_store_is_down(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    stack = Stack(UnreachableStore(clock), clock)
    for _ in range(2):
        stack.run(stack.message(), TransientError("down"))
    assert stack.hold(stack.message()) is not None
    warnings = [r for r in caplog.records if "fall back to per-process state" in r.getMessage()]
    assert len(warnings) == 1


def test_slow_successes_count_toward_the_slow_call_rate(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = POLICY.model_copy(update={"slow_call_duration": 0.5, "slow_call_rate_threshold": 1.0})
    stack = Stack(CountingStore(clock), clock, settings)
    ticks = iter([0.0, 1.0, 10.0, 11.0])
    monkeypatch.setattr("dramatiq_fairway.middlewares.breaker.time.perf_counter", lambda: next(ticks))
    stack.run(stack.message())
    stack.run(stack.message())
    stack.middleware.before_worker_shutdown(stack.broker, None)
    state = stack.store.get("dep")
    assert state is not None
    assert (state.state, state.slow_calls) == ("open", 2)


# On a real broker: jobs are held back, released, dead-lettered only when held too long.

E2E_BREAKER = BreakerSettings(minimum_calls=2, window_size=2, open_duration=1.0, half_open_max_calls=1)


@pytest.fixture
def settings(broker_kind: str, namespace: str, short_tmp: Path, state_client: redis.Redis) -> Settings:
    return Settings(
        broker=broker_kind,  # type: ignore[arg-type]
        namespace=namespace,
        state_url=REDIS_URL,
        data_dir=short_tmp,
        breaker=E2E_BREAKER,
    )


class Dependency:
    """What the actors call: records every call; fails while ``down``."""

    def __init__(self) -> None:
        self.down = False
        self.calls: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    def call(self, name: str) -> None:
        with self.lock:
            self.calls.append((time.time(), name))
        if self.down:
            raise TransientError("dependency down")


def run_options() -> dict[str, Any]:
    return dict(CurrentMessage.get_current_message().options)


def test_an_open_breaker_holds_jobs_without_retries_until_it_closes(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    broker.add_middleware(CurrentMessage())
    dependency = Dependency()
    finished: dict[str, dict[str, Any]] = {}

    @dramatiq.actor(broker=broker, queue_name=queue_name, breaker="dep", max_retries=3)
    def fetch(name: str) -> None:
        dependency.call(name)
        finished[name] = run_options()

    store = RedisBreakerStore.from_settings(settings)
    dependency.down = True
    start_worker(threads=2)
    for name in ("f1", "f2"):
        fetch.send_with_options(args=(name,), max_retries=0)
    opened = wait_for(lambda: (s := store.get("dep")) is not None and s.state == "open" and s)
    assert (opened.failures, opened.calls) == (2, 2)

    dependency.down = False
    for i in range(5):
        fetch.send(f"j{i}")
    wait_for(lambda: len(finished) == 5, timeout=20)
    late = [at for at, name in dependency.calls if name.startswith("j")]
    assert min(late) >= opened.retry_at  # type: ignore[operator]
    assert all(options.get("retries", 0) == 0 for options in finished.values())
    assert all(HELD_SINCE in options for options in finished.values())
    assert not any(BREAKER_HELD_SINCE in options for options in finished.values())
    assert store.get("dep").state == "closed"  # type: ignore[union-attr]
    # The two real failures were dead-lettered; no held job was.
    dead = DeadLetterStore(settings).list()
    assert sorted(record.args[0] for record in dead) == ["f1", "f2"]


def test_rate_limited_stops_every_worker_calling_the_dependency_for_retry_after(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    dependency = Dependency()
    limited_at: list[float] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, breaker="api")
    def call(name: str) -> None:
        dependency.call(name)
        if name == "first":
            limited_at.append(time.time())
            raise RateLimited(retry_after=2)

    start_worker(threads=4)
    call.send("first")
    wait_for(lambda: limited_at)
    store = RedisBreakerStore.from_settings(settings)
    wait_for(lambda: (state := store.get("api")) is not None and state.state == "open")
    for i in range(6):
        call.send(f"n{i}")
    wait_for(lambda: len(dependency.calls) >= 8, timeout=20)
    others = sorted(at for at, name in dependency.calls if name.startswith("n"))
    assert others[0] >= limited_at[0] + 2
    # The retry of "first" waited too (its retry is a job of the same breaker).
    assert sorted(at for at, name in dependency.calls if name == "first")[1] >= limited_at[0] + 2


def test_a_job_held_longer_than_max_hold_is_dead_lettered_as_held_too_long(
    broker: Broker, settings: Settings, queue_name: str, start_worker: Callable[..., Worker]
) -> None:
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, breaker="dep")
    def job() -> None:
        ran.append("ran")

    RedisBreakerStore.from_settings(settings).force_open("dep")
    held_since = int((time.time() - settings.breaker.max_hold - 1) * 1000)
    message = job.send_with_options(**{BREAKER_HELD_SINCE: held_since})
    start_worker()
    dead_letters = DeadLetterStore(settings)
    record = wait_for(lambda: dead_letters.get(message.message_id))
    assert record.reason == "held_too_long"
    assert record.error_type.endswith("HeldTooLong")
    assert ran == []


# The `fairway breakers` verbs (over the state store only).


def test_cli_lists_forces_open_closes_and_resets(
    namespace: str, short_tmp: Path, state_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    settings = Settings(namespace=namespace, state_url=REDIS_URL, data_dir=short_tmp)
    assert breakers_cli in cli.VERB_MODULES
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> Any:
        assert cli.main([*argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert run("breakers", "list") == []
    opened = run("breakers", "open", "semantic_scholar")
    assert opened["state"] == "open"
    assert opened["retry_at"] is None
    assert opened["opened_at"].endswith("Z")
    assert run("breakers", "list") == [opened]
    assert set(opened) == {"key", "state", "failures", "calls", "opened_at", "retry_at"}
    assert run("breakers", "close", "semantic_scholar")["state"] == "closed"
    assert run("breakers", "reset", "semantic_scholar")["state"] == "closed"
    assert run("breakers", "list") == []
    assert cli.main(["breakers", "close", "nope"]) == 1
    assert "no breaker named 'nope'" in capsys.readouterr().err


@pytest.mark.usefixtures("state_client")
@pytest.mark.parametrize("key", ["", "  "])
def test_cli_refuses_to_open_a_breaker_with_a_blank_key(
    key: str, namespace: str, short_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    settings = Settings(namespace=namespace, state_url=REDIS_URL, data_dir=short_tmp)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert cli.main(["breakers", "open", key]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"fairway: key: a breaker key cannot be empty or blank ({key!r})"]
    assert RedisBreakerStore.from_settings(settings).list() == []
    with pytest.raises(ValueError, match="key: a breaker key cannot be empty"):
        RedisBreakerStore.from_settings(settings).force_open(key)


def test_cli_logs_one_line_per_transition(
    namespace: str, state_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dramatiq_fairway.store.breakers")
    store = RedisBreakerStore(state_client, namespace)
    store.force_open("k")
    store.force_open("k")
    store.close("k")
    assert [r.getMessage().split(":")[1].split("(")[0].strip() for r in caplog.records] == [
        "closed -> open",
        "open -> closed",
    ]


def test_a_time_window_policy_per_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_BREAKER__KEYS", '{"api": {"window_type": "time", "window_duration": 30}}')
    breaker = load_settings().breaker
    assert (breaker.window_type, breaker.policy_for("api").window_type) == ("count", "time")
    assert breaker.policy_for("api").window_duration == 30
    monkeypatch.setenv("FAIRWAY_BREAKER__KEYS", '{"api": {"window_type": "hourly"}}')
    with pytest.raises(ConfigError, match="breaker 'api': window_type"):
        load_settings()


class CountingRedis(redis.Redis):
    """A state-store client that keeps every command it sends (the breaker store's round trips)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(args)
        return super().execute_command(*args, **options)


def test_the_hot_path_costs_no_call_without_a_breaker_and_one_finish_call_with_a_closed_one(  # noqa: PLR0917 (fixtures)
    broker: Broker,
    settings: Settings,
    queue_name: str,
    start_worker: Callable[..., Worker],
    state_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = CountingRedis(connection_pool=redis.ConnectionPool.from_url(REDIS_URL))
    monkeypatch.setattr(RedisBreakerStore, "from_settings", lambda s: RedisBreakerStore(client, s.namespace))
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def free(n: int) -> None:
        ran.append("free")

    @dramatiq.actor(broker=broker, queue_name=queue_name, breaker="dep")
    def guarded(n: int) -> None:
        ran.append("guarded")

    jobs = 200
    for n in range(jobs):
        free.send(n)
    start_worker(threads=4)
    wait_for(lambda: len(ran) == jobs, timeout=30)
    assert client.sent == []

    started = time.monotonic()
    for n in range(jobs):
        guarded.send(n)
    wait_for(lambda: len(ran) == 2 * jobs, timeout=30)
    elapsed = time.monotonic() - started
    calls = [
        args[5].decode() if isinstance(args[5], bytes) else args[5] for args in client.sent if args[0] == "EVALSHA"
    ]
    records, admits = calls.count("record"), calls.count("admit")
    # At most one call when a job finishes; a start asks the store only when this process heard
    # nothing of the breaker for CACHE_TTL (here: the first job).
    assert 1 <= records <= jobs
    assert 1 <= admits <= 1 + elapsed / CACHE_TTL
    other = [args[0] for args in client.sent if args[0] != "EVALSHA"]
    assert set(other) <= {"SADD", "SCRIPT LOAD"}
    state = RedisBreakerStore(state_client, settings.namespace).get("dep")
    assert state is not None
    assert (state.state, state.calls) == ("closed", settings.breaker.window_size)
