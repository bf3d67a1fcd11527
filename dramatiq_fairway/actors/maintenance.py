"""Periodic maintenance, scheduled by periodiq: ``periodiq dramatiq_fairway.actors``.

Two schedulers (two `periodiq` processes) would double every tick, so each run first claims its tick
with SET NX in the state store; the second claimant does nothing.

State-store keys:

    {namespace}:periodic:{job}:{tick}     claim of one tick of one job (``_CLAIM_TTL``)
    {<namespace>:hist}:b:{minute}         the backlog per queue and level, sampled once a minute
                                          into the history buckets (``store/history.py``, 24 h)
"""

from __future__ import annotations

import logging
import time

import dramatiq
from dramatiq.common import q_name
from periodiq import cron

from ..connections import state_store_client
from ..middlewares.queue_depth import queue_depth_by_level
from ..ops.diagnostics import check
from ..settings import load_settings
from ..store.dead_letters import purge_expired
from ..store.history import HistoryStore
from ..store.keys import periodic_tick_key

logger = logging.getLogger(__name__)

QUEUE = "fairway_maintenance"
# A claimed tick is kept a little longer than the longest period, so late duplicates still see it.
_CLAIM_TTL = 2 * 3600


def claim_tick(name: str, period: int, now: float | None = None) -> bool:
    """True for the first caller of the current ``period``-second tick of job ``name``."""
    settings = load_settings()
    tick = int((time.time() if now is None else now) // period)
    key = periodic_tick_key(settings.namespace, name, tick)
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


@dramatiq.actor(queue_name=QUEUE, actor_name="maintenance.sample_queue_metrics", periodic=cron("* * * * *"))
def sample_queue_metrics() -> dict[str, int] | None:
    """Every minute: keep the depth of every queue per level in the history buckets, also of queues
    no worker serves now (a worker's own sampler sees only its queues). Returns the sample as
    ``{"queue|level": depth}``; None when another scheduler had this tick."""
    now = time.time()
    if not claim_tick("sample_queue_metrics", 60, now):
        return None
    broker = dramatiq.get_broker()
    known = getattr(broker, "known_queues", broker.get_declared_queues)()
    depths = {
        (queue, level): depth
        for queue in sorted(name for name in known if name == q_name(name))
        for level, depth in queue_depth_by_level(broker, queue)
    }
    settings = load_settings()
    HistoryStore(state_store_client(settings), settings.namespace).sample_backlog(depths, int(now // 60))
    return {f"{queue}|{level}": depth for (queue, level), depth in depths.items()}
