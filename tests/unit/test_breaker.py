"""CircuitBreaker's decisions with an injected clock (StubBroker, pure logic): keys, counting,
caching, holding. Jobs held on a real broker and the CLI verbs are in tests/middlewares/test_breaker.py.
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import Message

from dramatiq_fairway.errors import ConfigError, PermanentError, RateLimited, TransientError
from dramatiq_fairway.middlewares.breaker import (
    BREAKER_HELD_SINCE,
    CACHE_TTL,
    BreakerOptionError,
    CircuitBreaker,
    HeldTooLong,
)
from dramatiq_fairway.middlewares.consumer_hooks import HELD_SINCE
from dramatiq_fairway.middlewares.metrics import Metrics
from dramatiq_fairway.settings import BreakerSettings, Settings, load_settings
from dramatiq_fairway.store.breakers import MemoryBreakerStore, StoreUnavailable

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


def test_a_time_window_policy_per_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_BREAKER__KEYS", '{"api": {"window_type": "time", "window_duration": 30}}')
    breaker = load_settings().breaker
    assert (breaker.window_type, breaker.policy_for("api").window_type) == ("count", "time")
    assert breaker.policy_for("api").window_duration == 30
    monkeypatch.setenv("FAIRWAY_BREAKER__KEYS", '{"api": {"window_type": "hourly"}}')
    with pytest.raises(ConfigError, match="breaker 'api': window_type"):
        load_settings()
