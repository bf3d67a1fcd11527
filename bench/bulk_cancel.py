"""Bulk cancel by filter against a namespace holding many job status records.

    python bench/bulk_cancel.py                          # 100,000 finished records, 1,000 queued to cancel
    python bench/bulk_cancel.py --records 1000000 --queued 10000

A bulk cancel (ops/bulk_cancel.py) finds queued jobs by SCAN over every ``ns:job:*`` record, so
its cost grows with the records the namespace keeps (an hour of successes, a week of the rest),
not with the jobs it cancels. This writes ``--records`` SUCCESS records and ``--queued`` PENDING
ones of tenant ``bench`` (plus as many of another tenant) into a throwaway namespace of the Redis
at FAIRWAY_STATE_URL (default the local one), times the dry run and the cancel, checks the counts,
and deletes the namespace. Prints one line per step; ``--json`` one object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid

import redis

from dramatiq_fairway.ops.bulk_cancel import cancel_queued
from dramatiq_fairway.store import delete_namespace
from dramatiq_fairway.store.audit import AuditLog
from dramatiq_fairway.store.status import JobState, JobStatusStore
from dramatiq_fairway.store.status_bulk import QueuedJobFilter

BATCH = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="finished (SUCCESS) records")
    parser.add_argument("--queued", type=int, default=1_000, help="queued jobs of the tenant cancelled")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    client = redis.Redis.from_url(os.environ.get("FAIRWAY_STATE_URL", "redis://127.0.0.1:6379/0"))
    namespace = f"fwbench-bulk-{uuid.uuid4().hex[:8]}"
    store = JobStatusStore(client, namespace)
    audit = AuditLog(client, namespace)
    try:
        started = time.perf_counter()
        _write(store, args.records, "other", finished=True)
        _write(store, args.queued, "bench", finished=False)
        _write(store, args.queued, "other", finished=False)
        written = time.perf_counter() - started
        selection = QueuedJobFilter(tenant="bench")
        started = time.perf_counter()
        dry = cancel_queued(store, audit, selection, who="bench", dry_run=True)
        dry_s = time.perf_counter() - started
        started = time.perf_counter()
        done = cancel_queued(store, audit, selection, who="bench")
        cancel_s = time.perf_counter() - started
        assert dry.matched == done.cancelled == args.queued, (dry, done)
        result = {
            "records": args.records + 2 * args.queued,
            "queued_cancelled": done.cancelled,
            "dry_run_s": round(dry_s, 3),
            "cancel_s": round(cancel_s, 3),
            "records_per_s_scanned": round((args.records + 2 * args.queued) / dry_s),
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"wrote {result['records']:,} records in {written:.1f} s")
            print(f"dry run: {dry.matched:,} matched in {dry_s:.2f} s ({result['records_per_s_scanned']:,} records/s)")
            print(f"cancel: {done.cancelled:,} revoked in {cancel_s:.2f} s (scan included)")
    finally:
        delete_namespace(client, namespace)


def _write(store: JobStatusStore, count: int, tenant: str, *, finished: bool) -> None:
    for start in range(0, count, BATCH):
        ids = [f"{tenant}-{finished}-{n}" for n in range(start, min(count, start + BATCH))]
        store.enqueued_many([(job, "bench_actor", "bench", tenant, 3) for job in ids])
        if finished:
            pipe = store.client.pipeline(transaction=False)
            for job in ids:
                pipe.hset(store.job_key(job), "state", JobState.SUCCESS.value)
            pipe.execute()


if __name__ == "__main__":
    main()
