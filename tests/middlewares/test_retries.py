"""ClassifiedRetries on real Redis and real RabbitMQ: what is retried, when, how often, and what a
dead message carries for the dead-letter store."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import dramatiq
import pika
import pytest
from dramatiq import Broker, Message, Middleware, Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import xq_name
from dramatiq.errors import Retry
from dramatiq.middleware import CurrentMessage, Retries, TimeLimit

from dramatiq_fairway.connections import rabbitmq_parameters
from dramatiq_fairway.errors import Cancelled, RateLimited
from dramatiq_fairway.middlewares.retries import HISTORY_LENGTH, ClassifiedRetries, RetryOptionError
from dramatiq_fairway.settings import RetrySettings, Settings
from dramatiq_fairway.store.dead_letters import DeadLetterStore

from ..support.helpers import info_lines, loud_lines, wait_for

RETRY_LOGGER = "dramatiq_fairway.middlewares.retries"


class DeadView(Middleware):
    """What died: the options each nacked message carried (what the dead-letter store is handed in
    before_nack), and the ids found dead by ``read_ids``."""

    def __init__(self, read_ids: Callable[[], set[str]]) -> None:
        self.nacked: dict[str, dict[str, Any]] = {}
        self.ids = read_ids

    def before_nack(self, broker: Broker, message: Message[Any]) -> None:
        self.nacked[message.message_id] = dict(message.options)


class Settled(Middleware):
    """The ids of the acked messages, and how many times each id was enqueued (a retry enqueues
    the id again)."""

    def __init__(self) -> None:
        self.acked: set[str] = set()
        self.enqueued: Counter[str] = Counter()

    def after_ack(self, broker: Broker, message: Message[Any]) -> None:
        self.acked.add(message.message_id)

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        self.enqueued[message.message_id] += 1


class Runs:
    """Each run of an actor: when it started and the options its message carried."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.options: list[dict[str, Any]] = []

    def record(self) -> int:
        message = CurrentMessage.get_current_message()
        assert message is not None
        self.started.append(time.monotonic())
        self.options.append(dict(message.options))
        return len(self.started)

    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.started, self.started[1:], strict=False)]


def _not_retried_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name.startswith(RETRY_LOGGER) and r.levelno == logging.WARNING]
    return [line.removeprefix("Message ").removesuffix("; not retried.") for line in lines if "not retried" in line]


@pytest.fixture
def unknown_policy() -> str:
    return "retry"


@pytest.fixture
def settings(settings: Settings, unknown_policy: str) -> Settings:
    return settings.model_copy(update={"retries": RetrySettings(unknown=unknown_policy)})  # type: ignore[arg-type]


@pytest.fixture
def runs(broker: Broker) -> Runs:
    broker.add_middleware(CurrentMessage())
    return Runs()


@pytest.fixture
def dead(broker: Broker, settings: Settings, queue_name: str) -> DeadView:
    """Dead messages of the queue: on its ``.XQ``, or recorded by ``DeadLetters`` (which, on
    fairway's RabbitMQ consumer, acks a recorded message instead of moving it to ``.XQ``)."""
    store = DeadLetterStore(settings)

    def read() -> set[str]:
        if isinstance(broker, RabbitmqBroker):
            connection = pika.BlockingConnection(rabbitmq_parameters(settings))
            channel = connection.channel()
            ids = set()
            while True:
                method, _properties, body = channel.basic_get(xq_name(queue_name), auto_ack=False)
                if method is None:
                    break
                ids.add(Message.decode(body).message_id)
            connection.close()  # unacked: they go back on the queue
        else:
            bodies = broker.client.hvals(f"{broker.namespace}:{xq_name(queue_name)}.msgs")  # type: ignore[attr-defined]
            ids = {Message.decode(body).message_id for body in bodies}
        return ids | {record.id for record in store.iter_records() if record.queue == queue_name}

    view = DeadView(read)
    broker.add_middleware(view)
    return view


def test_setup_puts_classified_retries_in_place_of_dramatiq_retries(broker: Broker) -> None:
    kinds = [type(m) for m in broker.middleware]
    assert ClassifiedRetries in kinds
    assert Retries not in kinds
    assert ClassifiedRetries.replaces_retries is True
    assert isinstance(ClassifiedRetries(), ClassifiedRetries)  # no arguments: reads load_settings()


def test_transient_error_is_retried_twice_within_backoff_bounds_then_succeeds(
    broker: Broker,
    queue_name: str,
    start_worker: Callable[..., Worker],
    *,
    runs: Runs,
    dead: DeadView,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)
    succeeded: list[bool] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, min_backoff=10, max_backoff=100)
    def flaky() -> None:
        if runs.record() <= 2:
            raise ConnectionResetError(104, "upstream reset the connection")
        succeeded.append(True)

    message = flaky.send()
    start_worker()
    wait_for(lambda: succeeded)

    assert len(runs.started) == 3
    # Each retry went through the delay queue and back; only the failures were counted.
    assert [options.get("retries", 0) for options in runs.options] == [0, 1, 2]
    delays = [options["retry_delay"] for options in runs.options[1:]]
    assert 10 <= delays[0] <= 20  # full_jitter, retry 1: [min, min * 2]
    assert 10 <= delays[1] <= 40  # retry 2: [min, min * 4]
    for gap, delay in zip(runs.gaps(), delays, strict=True):
        assert gap >= delay / 1000 - 0.002
    history = runs.options[2]["attempt_history"]
    assert [(entry["attempt"], entry["classification"]) for entry in history] == [(1, "transient"), (2, "transient")]
    assert all(entry["error_type"] == "ConnectionResetError" for entry in history)
    retry_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Retrying message")]
    assert len(retry_lines) == 2
    for attempt, (line, delay) in enumerate(zip(retry_lines, delays, strict=True), start=1):
        assert message.message_id in line
        assert "flaky" in line
        assert f"attempt {attempt} (transient)" in line
        assert f"in {delay} ms" in line
    assert message.message_id not in dead.ids()


def test_value_error_runs_once_and_lands_dead_as_permanent(
    broker: Broker,
    queue_name: str,
    start_worker: Callable[..., Worker],
    dead: DeadView,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)
    calls: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=5, min_backoff=10, max_backoff=100)
    def parse(text: str) -> None:
        calls.append(1)
        int(text)

    message = parse.send("not a number")
    start_worker()
    wait_for(lambda: message.message_id in dead.ids())
    broker.join(queue_name, timeout=10_000)

    assert calls == [1]
    options = dead.nacked[message.message_id]
    assert options["classification"] == "permanent"
    assert options["failure_reason"] == "permanent"
    assert options["error_type"] == "ValueError"
    assert "invalid literal for int()" in options["error_message"]
    assert "ValueError: invalid literal" in options["traceback"]
    assert options.get("retries", 0) == 0
    assert [entry["classification"] for entry in options["attempt_history"]] == ["permanent"]
    assert _not_retried_lines(caplog) == [f"{message.message_id} of actor parse failed on attempt 1 (permanent)"]


def test_rate_limited_waits_for_retry_after(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker], runs: Runs
) -> None:
    succeeded: list[bool] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, min_backoff=10, max_backoff=10_000)
    def call_api() -> None:
        if runs.record() == 1:
            raise RateLimited(retry_after=2)
        succeeded.append(True)

    call_api.send()
    start_worker()
    wait_for(lambda: succeeded)

    assert len(runs.started) == 2
    assert runs.gaps()[0] >= 2.0
    second = runs.options[1]
    assert second["classification"] == "rate_limited"
    assert 2000 <= second["retry_delay"] <= 2200  # the hint plus at most 10 % spread
    assert second["retries"] == 1


def test_rate_limit_hint_cut_short_by_max_backoff_uses_one_retry(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker], runs: Runs
) -> None:
    succeeded: list[bool] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=1, min_backoff=10, max_backoff=200)
    def call_api() -> None:
        runs.record()
        if time.monotonic() - runs.started[0] < 0.9:
            raise RateLimited(retry_after=1)
        succeeded.append(True)

    call_api.send()
    start_worker()
    wait_for(lambda: succeeded)

    # Several early attempts inside the one-second hint (max_backoff is 200 ms), one retry used.
    assert len(runs.started) >= 4
    assert runs.options[-1]["retries"] == 1
    assert all(options["retry_delay"] == 200 for options in runs.options[1:])
    assert all(gap >= 0.198 for gap in runs.gaps())


def test_sustained_rate_limiting_still_uses_up_retries_one_per_hint(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker], runs: Runs, dead: DeadView
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=2, min_backoff=10, max_backoff=100)
    def call_api() -> None:
        runs.record()
        raise RateLimited(retry_after=0.5)

    message = call_api.send()
    start_worker()
    wait_for(lambda: message.message_id in dead.ids())

    options = dead.nacked[message.message_id]
    assert (options["failure_reason"], options["retries"]) == ("retries_exhausted", 2)
    # Counted at 0 s, ~0.5 s and ~1 s (exhausted); the attempts in between were early, so free.
    elapsed = runs.started[-1] - runs.started[0]
    assert 1.0 <= elapsed < 2.0
    assert len(runs.started) > 3


def test_exhausted_retries_dead_letter_with_the_bounded_attempt_history(
    broker: Broker,
    queue_name: str,
    start_worker: Callable[..., Worker],
    dead: DeadView,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOGGER)
    calls: list[int] = []
    exhausted: list[tuple[dict[str, Any], dict[str, Any]]] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def on_exhausted(message_data: dict[str, Any], retry_info: dict[str, Any]) -> None:
        exhausted.append((message_data, retry_info))

    @dramatiq.actor(
        broker=broker,
        queue_name=queue_name,
        max_retries=11,
        min_backoff=1,
        max_backoff=5,
        on_retry_exhausted="on_exhausted",
    )
    def always_down() -> None:
        calls.append(1)
        raise TimeoutError("upstream timed out")

    message = always_down.send()
    start_worker()
    wait_for(lambda: message.message_id in dead.ids(), timeout=30)
    wait_for(lambda: exhausted)

    assert len(calls) == 12
    options = dead.nacked[message.message_id]
    assert options["failure_reason"] == "retries_exhausted"
    assert options["classification"] == "transient"
    assert options["retries"] == 11
    assert options["failures"] == 12
    history = options["attempt_history"]
    assert len(history) == HISTORY_LENGTH
    assert [entry["attempt"] for entry in history] == list(range(3, 13))
    assert {(entry["classification"], entry["error_type"]) for entry in history} == {("transient", "TimeoutError")}
    assert all(entry["at"].endswith("+00:00") for entry in history)
    assert history[-1]["delay"] is None  # the last run was not retried
    message_data, retry_info = exhausted[0]
    assert message_data["message_id"] == message.message_id
    assert retry_info == {"retries": 11, "max_retries": 11}
    assert _not_retried_lines(caplog) == [
        f"{message.message_id} of actor always_down failed on attempt 12 (transient, retries_exhausted)"
    ]


@pytest.mark.parametrize(("unknown_policy", "expected_runs"), [("retry", 2), ("fail", 1)])
def test_unknown_errors_follow_the_setting(
    broker: Broker,
    queue_name: str,
    start_worker: Callable[..., Worker],
    dead: DeadView,
    *,
    unknown_policy: str,
    expected_runs: int,
) -> None:
    calls: list[int] = []

    class OddError(Exception):
        pass

    @dramatiq.actor(broker=broker, queue_name=queue_name, min_backoff=10, max_backoff=20)
    def odd() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OddError("something no rule knows")

    message = odd.send()
    start_worker()
    if unknown_policy == "retry":
        wait_for(lambda: len(calls) == 2)
        broker.join(queue_name, timeout=10_000)
        assert message.message_id not in dead.nacked
    else:
        wait_for(lambda: message.message_id in dead.ids())
        options = dead.nacked[message.message_id]
        assert (options["classification"], options["failure_reason"]) == ("unknown", "permanent")
    assert len(calls) == expected_runs


def test_shutdown_re_enqueues_without_using_a_retry(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker], runs: Runs
) -> None:
    done: list[bool] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, notify_shutdown=True, max_retries=0)
    def long_job() -> None:
        if runs.record() == 1:
            while True:  # Python keeps running, so the Shutdown interrupt lands here
                time.sleep(0.01)
        done.append(True)

    long_job.send()
    first = Worker(broker, worker_threads=1, worker_timeout=50)
    first.start()
    wait_for(lambda: runs.started)
    first.stop(timeout=10_000)
    start_worker()
    wait_for(lambda: done)

    second = runs.options[1]
    assert second.get("retries", 0) == 0  # max_retries=0, yet it ran again
    [entry] = second["attempt_history"]
    assert (entry["classification"], entry["error_type"]) == ("interrupted", "dramatiq.middleware.shutdown.Shutdown")


def test_time_limit_uses_a_retry(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker], runs: Runs
) -> None:
    done: list[bool] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, time_limit=100, min_backoff=10, max_backoff=20)
    def slow() -> None:
        if runs.record() == 1:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pass
        done.append(True)

    # TimeLimit starts its watcher in after_process_boot, which only the dramatiq command emits.
    time_limit = next(m for m in broker.middleware if isinstance(m, TimeLimit))
    time_limit.after_process_boot(broker)
    slow.send()
    start_worker()
    wait_for(lambda: done)

    second = runs.options[1]
    assert second["retries"] == 1
    assert second["classification"] == "interrupted"
    assert second["error_type"] == "dramatiq.middleware.time_limit.TimeLimitExceeded"


def test_cancelled_ends_the_job_without_retry_or_dead_letter(
    broker: Broker,
    queue_name: str,
    start_worker: Callable[..., Worker],
    dead: DeadView,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    calls: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, min_backoff=10, max_backoff=20)
    def cancellable() -> None:
        calls.append(1)
        raise Cancelled()

    settled = Settled()
    broker.add_middleware(settled)
    message = cancellable.send()
    start_worker()
    # Polled: the ack comes after every after-hook, so a retry would be enqueued by then.
    wait_for(lambda: message.message_id in settled.acked)

    assert settled.enqueued[message.message_id] == 1
    assert calls == [1]
    assert dead.nacked == {}
    assert message.message_id not in dead.ids()
    # One INFO line says the job was cancelled; nothing louder, no traceback.
    assert loud_lines(caplog) == []
    assert info_lines(caplog, "cancelled") == [
        f"Message {message.message_id} of actor cancellable was cancelled; not retried."
    ]


def test_throws_fails_at_once_and_retry_when_decides_over_classification(
    broker: Broker,
    queue_name: str,
    start_worker: Callable[..., Worker],
    dead: DeadView,
) -> None:
    calls: dict[str, int] = {"expected": 0, "decided": 0}

    @dramatiq.actor(broker=broker, queue_name=queue_name, throws=(ConnectionError,), min_backoff=10, max_backoff=20)
    def expected() -> None:
        calls["expected"] += 1
        raise ConnectionError("the caller handles this")

    @dramatiq.actor(
        broker=broker,
        queue_name=queue_name,
        retry_when=lambda retries, _exc: retries < 2,
        min_backoff=10,
        max_backoff=20,
    )
    def decided() -> None:
        calls["decided"] += 1
        raise ValueError("permanent by type, but retry_when says retry twice")

    first, second = expected.send(), decided.send()
    start_worker()
    wait_for(lambda: {first.message_id, second.message_id} <= dead.ids())

    assert calls == {"expected": 1, "decided": 3}
    assert dead.nacked[first.message_id]["failure_reason"] == "permanent"
    assert dead.nacked[second.message_id]["failure_reason"] == "retries_exhausted"


def test_retry_delay_and_per_message_options(
    broker: Broker,
    queue_name: str,
    start_worker: Callable[..., Worker],
    runs: Runs,
    dead: DeadView,
) -> None:
    outcomes: dict[str, list[str]] = {}

    @dramatiq.actor(broker=broker, queue_name=queue_name, min_backoff=10, max_backoff=20, dont_retry_for=(KeyError,))
    def job(name: str, error: str) -> None:
        runs.record()
        seen = outcomes.setdefault(name, [])
        seen.append("run")
        if len(seen) > 1:
            return
        if error == "retry":
            raise Retry(delay=300)
        raise {"key": KeyError, "timeout": TimeoutError}[error]("first run fails")

    delayed = job.send("delayed", "retry")
    # per message: strings only; the message's retry_for replaces the actor's dont_retry_for
    rescued = job.send_with_options(args=("rescued", "key"), retry_for=["KeyError"], dont_retry_for=[])
    doomed = job.send_with_options(args=("doomed", "timeout"), max_retries=0)
    start_worker()
    wait_for(lambda: len(outcomes.get("delayed", [])) == 2 and len(outcomes.get("rescued", [])) == 2)
    wait_for(lambda: doomed.message_id in dead.ids())

    assert dead.nacked[doomed.message_id]["failure_reason"] == "retries_exhausted"
    assert outcomes["doomed"] == ["run"]
    delayed_runs = [options for options in runs.options if options.get("retry_delay") == 300]
    assert len(delayed_runs) == 1
    assert delayed_runs[0]["retries"] == 1
    assert delayed.message_id not in dead.ids()
    assert rescued.message_id not in dead.ids()


def test_bad_retry_options_are_refused_at_declaration_and_at_send(broker: Broker, queue_name: str) -> None:
    with pytest.raises(RetryOptionError, match="backoff"):

        @dramatiq.actor(broker=broker, queue_name=queue_name, backoff="linear")
        def wrong_backoff() -> None: ...

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def fine() -> None: ...

    with pytest.raises(RetryOptionError, match="backoff"):
        fine.send_with_options(backoff="linear")
    with pytest.raises(RetryOptionError, match="dotted exception names"):
        fine.send_with_options(retry_for=[KeyError])
    with pytest.raises(RetryOptionError, match="max_retries"):
        fine.send_with_options(max_retries=-1)


def test_credentials_in_error_messages_are_masked(
    broker: Broker,
    queue_name: str,
    start_worker: Callable[..., Worker],
    dead: DeadView,
) -> None:
    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def connect() -> None:
        raise PermissionError(13, "cannot log in to redis://app:hunter2@db.internal:6379/0")

    message = connect.send()
    start_worker()
    wait_for(lambda: message.message_id in dead.ids())

    options = dead.nacked[message.message_id]
    for text in (options["error_message"], options["traceback"], options["attempt_history"][0]["error_message"]):
        assert "hunter2" not in text
        assert "redis://app:[redacted:url_password]@db.internal" in text


def test_decorrelated_jitter_per_actor_with_injected_randomness(
    broker: Broker, queue_name: str, start_worker: Callable[..., Worker], runs: Runs
) -> None:
    middleware = next(m for m in broker.middleware if isinstance(m, ClassifiedRetries))
    middleware.rng = random.Random(5)
    expected = random.Random(5)
    done: list[bool] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, backoff="decorrelated_jitter", min_backoff=10, max_backoff=80)
    def flaky() -> None:
        if runs.record() <= 3:
            raise TimeoutError("slow")
        done.append(True)

    flaky.send()
    start_worker()
    wait_for(lambda: done)

    delays = [options["retry_delay"] for options in runs.options[1:]]
    previous = 10
    for delay in delays:
        assert delay == min(80, round(expected.uniform(10, 3 * previous)))
        previous = delay
