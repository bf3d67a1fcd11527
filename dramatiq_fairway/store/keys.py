"""Key names of the state-store keys whose data no store class wraps (the callers use plain commands).

``{namespace}`` is ``FAIRWAY_NAMESPACE``; docs/design.md ("Redis keys") lists every key, its
owner and its TTL. The owner named below writes the key and sets its TTL; the name lives here so
that every key of a namespace is spelled in ``store/``.

    {namespace}:fairness:queued:{queue}:{tenant}   middlewares/fairness.py (MAX_QUEUED_PER_TENANT)
    {namespace}:periodic:{job}:{tick}              actors/maintenance.py, one periodic tick claimed
    {namespace}:rabbitmq:queues                    brokers/rabbitmq.py, every queue declared
    {namespace}:demo:finished, :demo:breakers      demo/ledger.py, what ``fairway demo`` summarises
    {namespace}:quickstart:{run_id}                demo/quickstart.py, one run's tally

Stock Dramatiq's RedisBroker keys, which ``fairway migrate`` (ops/migrate_redis.py) reads and
empties; stock Dramatiq owns them, under its own namespace (``dramatiq`` by default):

    {stock}:{queue}, {stock}:{queue}.DQ            lists of message ids, ready / delayed
    {stock}:{queue}.XQ                             zset id -> time of death, dead
    each of the three plus ".msgs"                 hash id -> message body
    {stock}:__heartbeats__                         zset worker id -> last beat (ms)
    {stock}:__acks__.{worker}.{queue}              set of the ids a worker holds (queue: q or q.DQ)
"""

from __future__ import annotations


def fairness_queued_key(namespace: str, queue_name: str, tenant: str) -> str:
    return f"{namespace}:fairness:queued:{queue_name}:{tenant}"


def periodic_tick_key(namespace: str, job: str, tick: int) -> str:
    return f"{namespace}:periodic:{job}:{tick}"


def rabbitmq_queues_key(namespace: str) -> str:
    return f"{namespace}:rabbitmq:queues"


def rabbitmq_park_queues_key(namespace: str, queue_name: str) -> str:
    """The park queues (``q.DQ.park.<ms>``) any process declared for ``queue_name``: a set, so that
    ``fairway queues`` and ``join`` count what waits in them, whoever parked it."""
    return f"{namespace}:rabbitmq:park:{queue_name}"


def demo_finished_key(namespace: str) -> str:
    return f"{namespace}:demo:finished"


def demo_breakers_key(namespace: str) -> str:
    return f"{namespace}:demo:breakers"


def quickstart_tally_key(namespace: str, run_id: str) -> str:
    return f"{namespace}:quickstart:{run_id}"


def stock_ids_key(stock_namespace: str, queue_name: str) -> str:
    """Stock RedisBroker's ids of ``queue_name`` (``q``, ``q.DQ`` or ``q.XQ``)."""
    return f"{stock_namespace}:{queue_name}"


def stock_bodies_key(stock_namespace: str, queue_name: str) -> str:
    return f"{stock_ids_key(stock_namespace, queue_name)}.msgs"


def stock_bodies_pattern(stock_namespace: str) -> str:
    """A SCAN pattern for every stock bodies hash of ``stock_namespace`` (``fairway migrate`` lists queues with it)."""
    return f"{stock_namespace}:*.msgs"


def stock_heartbeats_key(stock_namespace: str) -> str:
    return f"{stock_namespace}:__heartbeats__"


def stock_acks_key(stock_namespace: str, worker_id: str, queue_name: str) -> str:
    """The ids stock worker ``worker_id`` holds from ``queue_name`` (``q`` or ``q.DQ``)."""
    return f"{stock_namespace}:__acks__.{worker_id}.{queue_name}"
