"""CircuitBreaker: one breaker per dependency, shared by every worker; jobs of an open one wait.

An actor (or one message) names the dependency it calls with the ``breaker`` option, which may
contain ``{tenant}`` (``breaker="api:{tenant}"``, the message's ``tenant`` option). There is no
default key: a buggy actor must not open a breaker on itself and hold its own jobs for ever.

Only ``transient`` and ``rate_limited`` outcomes count as failures (``permanent``, ``unknown`` and
``interrupted`` never do: a bad payload is not an outage); a call slower than the policy's
``slow_call_duration`` counts as slow. ``RateLimited(retry_after)`` opens the breaker for exactly
that long for every worker. The state machine and its storage are in
:mod:`dramatiq_fairway.store.breakers`; the policy per key comes from ``Settings.breaker``.

Waiting is not failing. While a breaker is open, or half-open with every trial slot taken, its
jobs are held back by fairway's consumer *before* a worker thread sees them (:meth:`hold`): put
back on the delay queue until the breaker's retry time plus jitter, no retry used, no hook fired.
**Holding needs fairway's brokers** (``FairRabbitmqBroker``, ``FairRedisBroker``, both built by
``setup()``); on a stock broker this middleware only records outcomes, and says so once at boot.

A job held back by its breaker for longer than ``FAIRWAY_BREAKER__MAX_HOLD`` is not held again
(only the breaker's own holds count, timed from the :data:`BREAKER_HELD_SINCE` option it sets on
the held copy and clears when the job is let through; a paused queue's wait does not count):
:meth:`hold` lets it through marked, and :meth:`before_process_message` fails it with :class:`HeldTooLong`
(a ``MiddlewareError``, so the actor does not run and Results and Callbacks see a failure, and a
``PermanentError``, so no retry is used), with the ``dead_letter_reason`` option set so that
``DeadLetters`` records it with reason ``held_too_long``.
``SkipMessage`` is never used: Results would store ``None`` for the job.

Cost per job while closed: nothing at start, at most one script call at the end.
When a job is fetched its breaker is looked up in a per-process cache that every store reply
refreshes unless a newer one is already there (replies carry the breaker's version); only a
cache older than :data:`CACHE_TTL` (the process was idle) costs a call. When a job finishes, its
outcome is sent to the store at once unless another thread of the process is already sending for
that breaker: then it joins the outcomes that thread sends next (group
commit), so a busy process makes fewer calls than it runs jobs, and what every worker knows of the
breaker is at most one call old while jobs flow, which is what stops every worker within a few
calls when one of them opens it. Failures and trials never wait for another thread's call. Jobs
without a ``breaker`` cost nothing. When the state store is down, breakers fall back to
per-process state, with one warning per minute.

Metrics (when the broker has :class:`~dramatiq_fairway.middlewares.metrics.Metrics`): each
transition a store call of this process made is counted, each change of this process's view of a
breaker sets ``fairway_breaker_state``, and each job it holds back counts as ``delayed_by_breaker``.
Transitions are also logged, one line each, by the process that made them
(:mod:`dramatiq_fairway.store.breakers`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.errors import ActorNotFound
from dramatiq.logging import get_logger
from dramatiq.message import Message
from dramatiq.middleware import MiddlewareError

from ..errors import PermanentError
from ..failures.classify import ErrorClassifier
from ..outage import OutageWarning
from ..settings import BreakerPolicy, Settings, load_settings
from ..store.breakers import (
    BreakerReply,
    BreakerStore,
    MemoryBreakerStore,
    Outcome,
    RedisBreakerStore,
    StoreUnavailable,
)
from ..tenants import tenant_of
from .dead_letters import REASON_OPTION
from .metrics import Metrics, find_metrics

# How long a worker trusts what it last heard of a breaker before asking the store again.
CACHE_TTL = 1.0
# A job of a half-open breaker whose trial slots are all taken looks again this soon (trials are
# short); capped by the policy's open_duration.
HALF_OPEN_RECHECK = 2.0
# Held jobs wake spread over up to this share of their wait (plus a quarter second), so an opening
# breaker does not wake every waiting job at the same instant.
JITTER_SHARE = 0.1
# A thread sending outcomes sends those other threads queued meanwhile, at most this many times
# more, so that it is never kept from its own next job for long; what is left goes with the next one.
_DRAIN_ROUNDS = 2
# Message option: when (epoch ms) the breaker first held this job back, since it last ran.
BREAKER_HELD_SINCE = "fairway_breaker_held_since"


class HeldTooLong(MiddlewareError, PermanentError):
    """A job waited on its open breaker for longer than ``FAIRWAY_BREAKER__MAX_HOLD``."""

    dead_letter_reason = "held_too_long"

    def __init__(self, key: str, held_for: float) -> None:
        super().__init__(f"held back by breaker {key!r} for {held_for:.0f}s, longer than the allowed hold")
        self.key = key
        self.held_for = held_for


class BreakerOptionError(MiddlewareError, ValueError):
    """The ``breaker`` option is not a string."""


@dataclass(frozen=True)
class _Cached:
    state: str
    retry_at: float | None
    fresh_until: float
    version: int
    shared: bool

    def superseded_by(self, reply: BreakerReply, shared: bool, now: float) -> bool:
        """Whether ``reply`` is at least as new as this entry. Threads' replies arrive in any order:
        a closed reply read before another thread's failure opened the breaker must not overwrite
        the open one. Versions count from 0 again after a reset or expiry, and the two stores count
        apart, so an expired entry or one of the other store always gives way."""
        return now >= self.fresh_until or shared is not self.shared or reply.version >= self.version


@dataclass
class _Pending:
    """Outcomes of one breaker waiting for the call that another thread has in flight."""

    policy: BreakerPolicy
    letters: list[str] = field(default_factory=list)
    sending: int = 0


class CircuitBreaker(Middleware):
    """Holds back the jobs of a dependency whose breaker is open; records every job's outcome."""

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        store: BreakerStore | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.settings = settings or load_settings()
        self.clock = clock or time.time
        # The shared store keeps one clock for every host (Redis TIME) unless a test injects one.
        self._clock_injected = clock is not None
        self._store = store
        self._store_lock = threading.Lock()
        self._fallback = MemoryBreakerStore(self.clock)
        self._store_down = OutageWarning(self.logger, clock=self.clock)
        self._classify = _classifier(self.settings)
        self._policies: dict[tuple[str, str], BreakerPolicy] = {}
        self._cache: dict[str, _Cached] = {}
        self._cache_lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._pending_lock = threading.Lock()
        self._trials: set[str] = set()
        self._held_too_long: dict[str, tuple[str, float]] = {}
        self._started: dict[str, float] = {}
        self._broker: Broker | None = None
        self._metrics: Metrics | None = None

    @property
    def actor_options(self) -> set[str]:
        return {"breaker"}

    def before_declare_actor(self, broker: Broker, actor: Any) -> None:
        _check_option(actor.options.get("breaker"), f"actor {actor.actor_name}")

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int) -> None:
        if "breaker" in message.options:  # most sends have none: no error text built for them
            _check_option(message.options["breaker"], f"message {message.message_id}")

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        self._bind(broker)
        if not callable(getattr(broker, "hold_back", None)):
            self.logger.warning(
                "%s is not a fairway broker: open breakers cannot hold jobs back on it, so jobs of an "
                "open breaker run anyway (outcomes are still recorded). Build the broker with "
                "dramatiq_fairway.setup() to hold them.",
                type(broker).__name__,
            )

    def hold(self, broker: Broker, message: Message[Any]) -> int | None:
        """Milliseconds ``message`` must wait for its breaker, or None to let it run now.

        Called by fairway's consumers before a worker sees the message. In half-open this takes one
        of the trial slots for the message.
        """
        target = self._target(broker, message)
        if target is None:
            return None
        self._bind(broker)
        key, policy = target
        now = self.clock()
        cached = self._cache.get(key)
        if cached is not None and now < cached.fresh_until:
            if cached.state == "closed":
                _let_through(message)
                return None
            if cached.state == "open" and cached.retry_at is not None and now < cached.retry_at:
                return self._wait(key, message, cached.retry_at, now)
        reply = self._call(key, now, lambda store, at: store.admit(key, policy, permit=message.message_id, now=at))
        if reply.allowed:
            if reply.state.state == "half_open":
                self._trials.add(message.message_id)
            _let_through(message)
            return None
        if reply.state.retry_at is not None and reply.state.retry_at > now:
            return self._wait(key, message, reply.state.retry_at, now)
        recheck = policy.open_duration if reply.state.forced else min(policy.open_duration, HALF_OPEN_RECHECK)
        return self._wait(key, message, now + recheck, now)

    def hold_at_start(self, broker: Broker, message: MessageProxy) -> int | None:
        """Milliseconds a job let through by :meth:`hold` must still wait when a worker thread takes
        it, from this process's fresh cache alone (no round trip), or None to run it now.

        A job prefetched while its breaker was closed can reach a worker thread after another job
        of this process opened the breaker; without this, each process would still run every job
        it had in hand then. A trial of a half-open breaker keeps its slot and runs.
        """
        if message.message_id in self._trials:
            return None
        target = self._target(broker, message)
        if target is None:
            return None
        key, policy = target
        cached = self._cache.get(key)
        now = self.clock()
        if cached is None or now >= cached.fresh_until or cached.state == "closed":
            return None
        if cached.state == "open" and cached.retry_at is not None and now < cached.retry_at:
            return self._wait(key, message._message, cached.retry_at, now)
        # Half-open (or open and due): the consumer's hold asks the store for a trial slot.
        return self._wait(key, message._message, now + min(policy.open_duration, HALF_OPEN_RECHECK), now)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        held = self._held_too_long.pop(message.message_id, None)
        if held is not None:
            message.options[REASON_OPTION] = HeldTooLong.dead_letter_reason
            message.fail()
            raise HeldTooLong(*held)
        target = self._target(broker, message)
        if target is not None and target[1].slow_call_duration is not None:
            self._started[message.message_id] = time.perf_counter()

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if isinstance(exception, HeldTooLong):
            return
        target = self._target(broker, message)
        if target is None:
            return
        self._bind(broker)
        key, policy = target
        started = self._started.pop(message.message_id, None)
        outcome, retry_after = self._outcome(exception, started, policy)
        if exception is None and message.failed:
            outcome = Outcome.IGNORED
        self._report(key, policy, message.message_id, outcome, retry_after)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        target = self._target(broker, message)
        self._started.pop(message.message_id, None)
        if target is not None:
            self._report(target[0], target[1], message.message_id, Outcome.IGNORED, 0.0)

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        with self._pending_lock:
            pending = {key: buffered.letters for key, buffered in self._pending.items() if buffered.letters}
            for key in pending:
                self._pending[key].letters = []
        for key, letters in pending.items():
            self._send(key, "".join(letters), self._pending[key].policy, self.clock())

    def _bind(self, broker: Broker) -> None:
        if broker is not self._broker:
            self._broker, self._metrics = broker, find_metrics(broker)

    def _target(self, broker: Broker, message: Message[Any] | MessageProxy) -> tuple[str, BreakerPolicy] | None:
        """The breaker key of ``message`` (``{tenant}`` filled in) and its policy, or None."""
        if "breaker" in message.options:
            template = message.options["breaker"]
        else:
            try:
                template = broker.get_actor(message.actor_name).options.get("breaker")
            except ActorNotFound:
                return None
        if not template or not isinstance(template, str):
            return None
        key = template.replace("{tenant}", tenant_of(message.options))
        return key, self._policy(key, template)

    def _policy(self, key: str, template: str) -> BreakerPolicy:
        policy = self._policies.get((key, template))
        if policy is None:
            policy = self._policies[key, template] = self.settings.breaker.policy_for(key, template)
        return policy

    def _wait(self, key: str, message: Message[Any], retry_at: float, now: float) -> int | None:
        held_since = message.options.get(BREAKER_HELD_SINCE)
        if held_since is not None:
            held_for = now - held_since / 1000
            if held_for > self.settings.breaker.max_hold:
                self._held_too_long[message.message_id] = (key, held_for)
                self._trials.discard(message.message_id)
                return None
        else:
            # The consumer's held copy carries the message's options, this one included.
            message.options[BREAKER_HELD_SINCE] = round(now * 1000)
        wait = max(retry_at - now, 0.0)
        wait += random.uniform(0, wait * JITTER_SHARE + 0.25)
        self.logger.debug("Holding message %s back %.3fs for breaker %r.", message.message_id, wait, key)
        if self._metrics is not None:
            self._metrics.message_held(message)
        return max(1, round(wait * 1000))

    def _outcome(
        self, exception: BaseException | None, started: float | None, policy: BreakerPolicy
    ) -> tuple[Outcome, float]:
        slow = (
            started is not None
            and policy.slow_call_duration is not None
            and time.perf_counter() - started > policy.slow_call_duration
        )
        if exception is None:
            return (Outcome.SLOW_SUCCESS if slow else Outcome.SUCCESS), 0.0
        classification, retry_after = self._classify(exception)
        if classification == "rate_limited":
            return Outcome.RATE_LIMITED, retry_after if retry_after is not None else policy.open_duration
        if classification == "transient":
            return (Outcome.SLOW_FAILURE if slow else Outcome.FAILURE), 0.0
        return Outcome.IGNORED, 0.0

    def _report(self, key: str, policy: BreakerPolicy, message_id: str, outcome: Outcome, retry_after: float) -> None:
        if message_id in self._trials:
            self._trials.discard(message_id)
            self._send(key, outcome, policy, self.clock(), permit=message_id, retry_after=retry_after)
            return
        if outcome is Outcome.IGNORED:
            return
        urgent = outcome not in (Outcome.SUCCESS, Outcome.SLOW_SUCCESS)
        with self._pending_lock:
            buffered = self._pending.get(key)
            if buffered is None:
                buffered = self._pending[key] = _Pending(policy)
            if buffered.sending and not urgent:
                buffered.letters.append(outcome)
                return
            # A failure never waits; it is the last letter of its own call, so that a rate-limited
            # outcome's retry_after goes with it (the queue never holds one).
            letters, buffered.letters = "".join(buffered.letters) + outcome, []
            buffered.sending += 1
        try:
            self._send(key, letters, policy, self.clock(), retry_after=retry_after)
            for _round in range(_DRAIN_ROUNDS):
                with self._pending_lock:
                    letters, buffered.letters = "".join(buffered.letters), []
                if not letters:
                    break
                self._send(key, letters, policy, self.clock())
        finally:
            with self._pending_lock:
                buffered.sending -= 1

    def _send(
        self,
        key: str,
        letters: str,
        policy: BreakerPolicy,
        now: float,
        *,
        permit: str | None = None,
        retry_after: float = 0.0,
    ) -> None:
        def record(store: BreakerStore, at: float | None) -> BreakerReply:
            return store.record(key, letters, policy, permit=permit, retry_after=retry_after, now=at)

        self._call(key, now, record)

    def _call(
        self, key: str, now: float, operation: Callable[[BreakerStore, float | None], BreakerReply]
    ) -> BreakerReply:
        """Run ``operation`` on the shared store (the per-process one while it is down); refresh the cache."""
        shared = True
        try:
            reply = operation(self._shared_store(), now if self._clock_injected else None)
        except StoreUnavailable as error:
            self._store_down.warn("Breakers fall back to per-process state: %s", error)
            reply, shared = operation(self._fallback, now), False
        state = reply.state.state
        with self._cache_lock:
            seen = self._cache.get(key)
            if seen is not None and not seen.superseded_by(reply, shared, now):
                if self._metrics is not None and reply.previous is not None:
                    self._metrics.breaker_transition(key, state)
                return reply
            self._cache[key] = _Cached(state, reply.state.retry_at, now + CACHE_TTL, reply.version, shared)
            # A change without a transition of this call's own: another process (or the CLI) made
            # it, and only this process's view changes.
            if self._metrics is not None and (reply.previous is not None or seen is None or seen.state != state):
                self._metrics.breaker_changed(key, state, reply.previous)
        return reply

    def _shared_store(self) -> BreakerStore:
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = RedisBreakerStore.from_settings(self.settings)
        return self._store


def _let_through(message: Message[Any]) -> None:
    """Let ``message`` run now: a later hold is timed afresh (FAIRWAY_BREAKER__MAX_HOLD)."""
    message.options.pop(BREAKER_HELD_SINCE, None)


def _check_option(value: Any, where: str) -> None:
    if value is not None and not isinstance(value, str):
        raise BreakerOptionError(f"{where}: breaker must be a string (a dependency key), got {value!r}")


def _classifier(settings: Settings) -> Callable[[BaseException], tuple[str, float | None]]:
    """``exception → (classification, retry_after)`` by fairway's ErrorClassifier."""
    classifier = ErrorClassifier(settings)

    def classify(exception: BaseException) -> tuple[str, float | None]:
        verdict = classifier.classify(exception)
        return str(verdict.classification), verdict.retry_after

    return classify
