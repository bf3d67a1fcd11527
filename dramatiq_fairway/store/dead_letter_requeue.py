"""Requeue of dead letters: each record's message sent again as a new message, then the record removed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import q_name, xq_name
from pydantic import BaseModel

from ..encryption.keyring import Keyring, Undecryptable
from ..errors import FairwayError
from ..priority import Priority
from ..redis_cluster import is_cluster
from .dead_letter_model import DeadLetter
from .dead_letter_sealing import open_record

# Options that describe the failed run rather than the job; a requeued message starts without them.
_RUN_OPTIONS = frozenset(
    {
        "retries",
        "traceback",
        "eta",
        "redis_message_id",
        "requeue_timestamp",
        "attempts",
        "attempt_history",
        "failures",
        "failure_reason",
        "dead_letter_reason",
        "retry_delay",
        "rate_limit_until",
        "classification",
        "error_type",
        "error_message",
        "broker_priority",
        "fairway_held_since",
        "traceparent",
        "tracestate",
    }
)
# The failed send's W3C trace context: the requeued send starts a new trace that links to it
# (middlewares/tracing.py reads this option).
_TRACE_LINK = "trace_link"


class RequeuedMessage(BaseModel):
    id: str
    new_id: str | None
    queue: str
    actor: str | None
    priority_level: str


class SkippedRecord(BaseModel):
    id: str
    reason: str


REFUSED_BY_BROKER = "the broker refused it"


class RequeueResult(BaseModel):
    dry_run: bool
    requeued: list[RequeuedMessage] = []
    skipped: list[SkippedRecord] = []

    def refused(self) -> list[SkippedRecord]:
        """The records kept because the broker refused their new message (the others were undecodable)."""
        return [item for item in self.skipped if item.reason.startswith(REFUSED_BY_BROKER)]


class RedactedRecords(FairwayError):
    """Requeue refused: the selected records hold redacted placeholders instead of real values."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields
        names = sorted({name for names in fields.values() for name in names})
        super().__init__(
            f"{len(fields)} record(s) have redacted fields ({', '.join(names)}); "
            "pass --allow-redacted to requeue them with the placeholder"
        )


def requeue_records(
    records: Iterable[DeadLetter],
    broker: dramatiq.Broker,
    remove: Callable[[str], object],
    *,
    priority: Priority | str | int = Priority.HIGH,
    rate: float | None = None,
    dry_run: bool = False,
    allow_redacted: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    keyring: Keyring | None = None,
) -> RequeueResult:
    """Send ``records``' messages again, and ``remove`` each record once the broker took its message.

    Each new message gets a fresh id, ``priority_level`` = ``priority`` and
    ``requeued_from`` = the record id. ``rate`` caps messages per second. Records with redacted
    fields are refused as a whole (``RedactedRecords``) unless ``allow_redacted``. A record
    whose message the broker refuses is kept and listed in ``skipped``. A job with a
    ``unique_key`` runs again: the copy takes the key over from the failed message (see
    ``store/unique_claim.lua``). A sealed record is opened with ``keyring`` (the new message is
    sealed again by the encoder, bound to its new id); one that cannot be opened is skipped.
    """
    level = Priority.parse(priority)
    selected = list(records)
    redacted = {r.id: r.redacted_fields for r in selected if r.redacted_fields}
    if redacted and not allow_redacted:
        raise RedactedRecords(redacted)
    result = RequeueResult(dry_run=dry_run)
    for position, stored in enumerate(selected):
        if not stored.actor or "actor_name" not in stored.raw:
            result.skipped.append(SkippedRecord(id=stored.id, reason="the original message could not be decoded"))
            continue
        try:
            record = open_record(stored, keyring)
        except Undecryptable as error:
            result.skipped.append(SkippedRecord(id=stored.id, reason=f"undecryptable: {error}"))
            continue
        message = _requeued_message(record, level)
        requeued = RequeuedMessage(
            id=record.id,
            new_id=None if dry_run else message.message_id,
            queue=message.queue_name,
            actor=record.actor,
            priority_level=level.name,
        )
        if not dry_run:
            if rate and position:
                sleep(1.0 / rate)
            # The record goes only once the broker has the new message (with publisher
            # confirms on RabbitMQ, once it confirmed): a refused enqueue keeps the job here.
            try:
                broker.enqueue(message)
            except Exception as error:  # any refusal keeps the record; the other records go on
                reason = " ".join(str(error).split()) or "no detail"
                result.skipped.append(
                    SkippedRecord(id=record.id, reason=f"{REFUSED_BY_BROKER} ({type(error).__name__}: {reason})")
                )
                continue
            remove(record.id)
            _drop_from_redis_xq(broker, record)
        result.requeued.append(requeued)
    return result


def _requeued_message(record: DeadLetter, level: Priority) -> dramatiq.Message:
    raw = record.raw
    options = {key: value for key, value in raw.get("options", {}).items() if key not in _RUN_OPTIONS}
    options.update(priority_level=level.name, requeued_from=record.id)
    trace_context = {key: raw["options"][key] for key in ("traceparent", "tracestate") if key in raw.get("options", {})}
    if trace_context:
        options[_TRACE_LINK] = trace_context
    return dramatiq.Message(
        queue_name=q_name(raw.get("queue_name", record.queue)),
        actor_name=raw["actor_name"],
        args=tuple(raw.get("args", ())),
        kwargs=dict(raw.get("kwargs", {})),
        options=options,
        message_id=str(uuid.uuid4()),
    )


def _drop_from_redis_xq(broker: dramatiq.Broker, record: DeadLetter) -> None:
    """On a stock RedisBroker a nacked message also sits in ``q.XQ``; requeue must take it out."""
    redis_id = record.raw.get("options", {}).get("redis_message_id")
    # A stock RedisBroker never runs on a cluster, and fairway's broker keeps no dead letter in
    # q.XQ: on a cluster there is nothing to drop (and the two keys are in different slots).
    if not isinstance(broker, RedisBroker) or not redis_id or is_cluster(broker.client):
        return
    dead = f"{broker.namespace}:{xq_name(q_name(record.queue))}"
    pipe = broker.client.pipeline(transaction=True)
    pipe.zrem(dead, redis_id)
    pipe.hdel(f"{dead}.msgs", redis_id)
    pipe.execute()
