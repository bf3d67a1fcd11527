"""Periodic maintenance, scheduled by periodiq: ``periodiq dramatiq_fairway.actors``.

Two schedulers would double every tick (DRAMATIQ-NOTES.md), so each run first claims its tick
with SET NX in the state store; the second claimant does nothing.
"""

from __future__ import annotations

import logging
import time

import dramatiq
from periodiq import cron

from ..connections import state_store_client
from ..diagnostics import check
from ..settings import load_settings
from ..store.dead_letters import purge_expired

logger = logging.getLogger(__name__)

QUEUE = "fairway_maintenance"
# A claimed tick is kept a little longer than the longest period, so late duplicates still see it.
_CLAIM_TTL = 2 * 3600


def claim_tick(name: str, period: int, now: float | None = None) -> bool:
    """True for the first caller of the current ``period``-second tick of job ``name``."""
    settings = load_settings()
    tick = int((time.time() if now is None else now) // period)
    key = f"{settings.namespace}:periodic:{name}:{tick}"
    return bool(state_store_client(settings).set(key, "1", nx=True, ex=_CLAIM_TTL))


@dramatiq.actor(queue_name=QUEUE, actor_name="maintenance.purge_dead_letters", periodic=cron("0 * * * *"))
def purge_dead_letters() -> None:
    """Hourly: replay a spooled backlog, then drop dead letters past retention (age, then count)."""
    if claim_tick("purge_dead_letters", 3600):
        removed = purge_expired(load_settings())
        logger.info("dead-letter retention removed %d records", removed)


@dramatiq.actor(queue_name=QUEUE, actor_name="maintenance.health_check", periodic=cron("*/5 * * * *"))
def health_check() -> None:
    """Every 5 minutes: warn in the worker log when the broker or the state store stops answering."""
    if claim_tick("health_check", 300):
        report = check(load_settings())
        if not report.ok:
            logger.warning("fairway health check: %s", report.failure())
