"""Teach fairway your own exceptions: which failures deserve a retry and which never will.

Run a worker, then the producer::

    dramatiq examples.custom_classifier
    python examples/custom_classifier.py

A payment gateway's client raises its own ``GatewayBusy`` (try again) and ``CardDeclined`` (no
point). Unclassified, both would be ``unknown`` and retried alike (``FAIRWAY_RETRIES__UNKNOWN``).
Two rules fix that: a busy gateway is retried with backoff, a declined card is dead-lettered at
once, with reason ``permanent``, for someone to look at with ``fairway dlq list``.
"""

from __future__ import annotations

import time

import dramatiq

import dramatiq_fairway
from dramatiq_fairway import ClassifiedRetries
from dramatiq_fairway.store.dead_letters import DeadLetterStore
from dramatiq_fairway.store.status import JobState, JobStatusStore

settings = dramatiq_fairway.load_settings()
broker = dramatiq_fairway.setup(settings)
state_store = dramatiq_fairway.state_store_client(settings)


class GatewayBusy(Exception):
    """The gateway asks us to come back later."""


class CardDeclined(Exception):
    """The bank said no; asking again will not change its mind."""


classifier = next(m for m in broker.middleware if isinstance(m, ClassifiedRetries)).classifier
classifier.register(GatewayBusy, "transient")
classifier.register(CardDeclined, "permanent")

ATTEMPTS_KEY = f"{settings.namespace}:examples:charge-attempts"


@dramatiq.actor(queue_name="payments", max_retries=5, min_backoff=100, max_backoff=1000)
def charge(order_id: str, card: str) -> None:
    """A stand-in gateway: busy for the first two attempts of every order; some cards are declined."""
    attempt = int(state_store.hincrby(ATTEMPTS_KEY, order_id, 1))
    state_store.expire(ATTEMPTS_KEY, 3600)
    if card.endswith("0002"):
        raise CardDeclined(f"card ending {card[-4:]} declined for order {order_id}")
    if attempt < 3:
        raise GatewayBusy(f"gateway busy (attempt {attempt})")


def main(timeout: float = 60.0) -> None:
    orders = {"order-1": "4242424242424242", "order-2": "4000000000000002"}
    messages = {order: charge.send(order, card) for order, card in orders.items()}
    jobs = JobStatusStore.from_settings(settings)
    deadline = time.monotonic() + timeout
    finished: dict[str, JobState] = {}
    while len(finished) < len(messages):
        if time.monotonic() > deadline:
            raise SystemExit(f"orders unfinished within {timeout:.0f}s: {set(messages) - set(finished)}")
        for order, message in messages.items():
            record = jobs.get(message.message_id)
            if record is not None and record.state.finished:
                finished[order] = record.state
        time.sleep(0.1)
    dead_letters = DeadLetterStore(settings)
    for order, state in finished.items():
        attempts = int(state_store.hget(ATTEMPTS_KEY, order) or 0)
        line = f"{order}: {state.value} after {attempts} attempt(s)"
        letter = dead_letters.get(messages[order].message_id)
        if letter is not None:
            line += f", dead-lettered ({letter.reason}: {letter.error_type})"
        print(line)


if __name__ == "__main__":
    main()
