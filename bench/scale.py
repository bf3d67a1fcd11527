"""10,000 tenants on the real dispatch script: picks/s, latency, Redis CPU per pick and fairness.

    python bench/scale.py                                   # the matrix on FAIRWAY_REDIS_URL
    python bench/scale.py --cluster 127.0.0.1:17400         # ... and on that cluster, 1 and 3 partitions
    python bench/scale.py --tenants 100 --clients 4 --seconds 1 --json   # one configuration
    python bench/scale.py --cluster 127.0.0.1:17400 --partitions 3 --tenants 100 --clients 4  # one, on a cluster
    python bench/scale.py --memory                          # bytes per queued message and tenant

The queue is filled with ``--jobs`` messages (default 100,000) over ``--tenants`` tenants: one
tenant holds half, the others a Zipf (s = 1.1) share of the rest, at least one each; the big
tenant's jobs are sent first, so FIFO order would serve them first. Then
``--clients`` threads call ``fair_redis.lua``'s ``fetch`` (``--batch`` messages a call, with the
acks of the previous batch in the same pipeline, as a worker's consumer does) for ``--seconds``,
on the partitions in turn (``PartitionTurns``, as ``FairRedisBroker`` does), jobs doing nothing.

Printed per configuration: picks/s; the client-timed p50/p99 of one fetch round trip; the Redis
servers' CPU (``INFO cpu``, user + sys, all masters) per pick (fetch and ack; ``--json`` adds the
CPU per enqueue of the fill, pipelined 2,000 a round trip); and Jain's index of the tenants'
served shares per 1-second window. A window counts the tenants that still had a backlog at its
end (so their demand did not limit them); since a window of W picks over n such tenants cannot
give everyone the same integer count when n does not divide W, the index is divided by the best
integer split's (1.0 = as equal as possible; ``jain_raw`` is the plain index).
The matrix also runs stock Dramatiq's ``RedisBroker`` script on the single Redis (``dispatch``
``dramatiq``: FIFO fetch of 8, one ack call per job as its consumer does), for the ratio.
The cluster runs use redis-py's ``RedisCluster`` directly (one-slot script calls). When
``FAIRWAY_REDIS_URL`` names a cluster, the one configuration asked for runs on it (as ``--cluster``
with its first node); a ``redis+sentinel://`` URL runs on the service's current master.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker
from redis.cluster import ClusterNode, RedisCluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dramatiq_fairway.brokers.fair_redis import SCRIPT
from dramatiq_fairway.connections import redis_client
from dramatiq_fairway.redis_urls import parse_redis_url
from dramatiq_fairway.settings import TlsSettings
from dramatiq_fairway.store.partitions import PartitionTurns, partition_of, partition_prefix
from dramatiq_fairway.store.scripts import LuaScript

LUA = LuaScript.from_text(SCRIPT)
BODY = json.dumps({"queue_name": "scale", "actor_name": "noop", "args": [], "kwargs": {}, "options": {}})
Client = redis.Redis | RedisCluster


def backlogs(tenants: int, jobs: int) -> list[int]:
    """Jobs per tenant: tenant 0 half of them, the rest Zipf(1.1) over the others, at least 1 each."""
    if tenants == 1:
        return [jobs]
    rest = jobs - jobs // 2
    weights = [1 / k**1.1 for k in range(1, tenants)]
    total = sum(weights)
    return [jobs // 2, *(max(1, round(rest * w / total)) for w in weights)]


def args_of(command: str, *rest: Any) -> list[Any]:
    # ARGV as FairRedisBroker sends them: command, now ("" = server TIME), broker id, max wait, part.
    return [command, "", "bench", 300_000, "q", *rest]


def arrivals(counts: Sequence[int]) -> list[tuple[int, int]]:
    """(tenant, k) in sending order: the big tenant's flood first, then the others interleaved
    (round k sends the k-th job of every tenant left), so that FIFO order would serve the flood first."""
    order = [(0, k) for k in range(counts[0])]
    for k in range(max(counts[1:], default=0)):
        order += [(tenant, k) for tenant in range(1, len(counts)) if k < counts[tenant]]
    return order


def fill(client: Client, prefixes: Sequence[str], counts: Sequence[int]) -> None:
    calls: list[tuple[str, list[Any]]] = []
    for tenant, k in arrivals(counts):
        index = partition_of(f"t{tenant}", len(prefixes))
        rid = f"{index}:{tenant}.{k}"
        calls.append((prefixes[index], args_of("enqueue", rid, BODY, 3, f"t{tenant}")))
    for first in range(0, len(calls), 2000):
        pipe = client.pipeline(transaction=False)
        for key, args in calls[first : first + 2000]:
            pipe.evalsha(LUA.sha, 1, key, *args)
        pipe.execute()


def cpu_seconds(nodes: Sequence[redis.Redis]) -> float:
    return sum(float(n.info("cpu")["used_cpu_user"]) + float(n.info("cpu")["used_cpu_sys"]) for n in nodes)


class Fetcher(threading.Thread):
    def __init__(self, client: Client, prefixes: Sequence[str], name: str, batch: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client, self.prefixes, self.batch, self.stop = client, prefixes, batch, stop
        self.turns = PartitionTurns(name)
        self.picks: list[tuple[float, int]] = []
        self.latencies: list[float] = []

    def run(self) -> None:
        held: list[str] = []
        while not self.stop.is_set():
            for index in self.turns.order(len(self.prefixes)):
                pipe = self.client.pipeline(transaction=False)
                by_partition: dict[int, list[str]] = {}
                for rid in held:
                    by_partition.setdefault(int(rid.split(":", 1)[0]), []).append(rid)
                for part, rids in by_partition.items():
                    pipe.evalsha(LUA.sha, 1, self.prefixes[part], *args_of("ack", *rids))
                held = []
                pipe.evalsha(LUA.sha, 1, self.prefixes[index], *args_of("fetch", self.batch, 1.0, 1))
                started = time.perf_counter()
                flat, _throttled, active = pipe.execute()[-1]
                done = time.perf_counter()
                self.latencies.append(done - started)
                self.turns.served(index, len(flat) // 2, int(active))
                if flat:
                    held = [rid.decode() for rid in flat[::2]]
                    self.picks += [(done, int(rid.split(".")[0].split(":")[1])) for rid in held]
                    break


class PlainFetcher(Fetcher):
    """Stock Dramatiq's ``RedisBroker`` path: its dispatch script fetches (FIFO), one ack call per job."""

    def __init__(self, broker: RedisBroker, name: str, batch: int, stop: threading.Event) -> None:
        super().__init__(broker.client, [], name, batch, stop)
        self.broker = broker

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            bodies = self.broker.do_fetch("scale", self.batch)
            done = time.perf_counter()
            self.latencies.append(done - started)
            for body in bodies:
                rid = json.loads(body)["options"]["redis_message_id"]
                self.picks.append((done, int(rid.split(".")[0])))
                self.broker.do_ack("scale", rid)


def plain_fill(broker: RedisBroker, counts: Sequence[int]) -> None:
    dispatch = broker.scripts["dispatch"]
    pipe = broker.client.pipeline(transaction=False)
    for tenant, k in arrivals(counts):
        rid = f"{tenant}.{k}"
        body = BODY.replace('"options": {}', '"options": {"redis_message_id": "' + rid + '"}')
        # ARGV as RedisBroker._dispatch sends them (no maintenance, a 1,000-id unpack limit).
        args = ["enqueue", int(time.time() * 1000), "scale", broker.broker_id, 60_000, 604_800_000, 0, 1000, rid, body]
        dispatch(keys=[broker.namespace], args=args, client=pipe)
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()


def jain(served: Sequence[int]) -> float:
    total, squares = sum(served), sum(x * x for x in served)
    return total * total / (len(served) * squares) if squares else 1.0


def best_jain(picks: int, tenants: int) -> float:
    whole, extra = divmod(picks, tenants)
    return jain([whole + 1] * extra + [whole] * (tenants - extra))


def fairness(picks: list[tuple[float, int]], counts: Sequence[int], start: float) -> tuple[float, float]:
    """(normalised, raw) minimum Jain's index over the complete 1-second windows."""
    remaining = list(counts)
    picks.sort()
    normalised, raw = [], []
    window, i = start, 0
    while True:
        end = window + 1.0
        if not picks or end > picks[-1][0]:
            break
        served: Counter[int] = Counter()
        while i < len(picks) and picks[i][0] < end:
            served[picks[i][1]] += 1
            remaining[picks[i][1]] -= 1
            i += 1
        backlogged = [served[t] for t, left in enumerate(remaining) if left > 0]
        if backlogged and sum(backlogged):
            raw.append(jain(backlogged))
            normalised.append(raw[-1] / best_jain(sum(backlogged), len(backlogged)))
        window = end
    return (min(normalised), min(raw)) if raw else (1.0, 1.0)


@dataclass(frozen=True)
class Plan:
    """One configuration: where (a client, the masters whose CPU counts), and how many of what."""

    client: Client
    nodes: list[redis.Redis]
    redis_kind: str
    partitions: int
    tenants: int
    clients: int
    dispatch: str = "fairway"  # or "dramatiq": stock RedisBroker's script, for the ratio


def run_one(plan: Plan, args: Any) -> dict[str, Any]:
    client, nodes, partitions, tenants, clients = plan.client, plan.nodes, plan.partitions, plan.tenants, plan.clients
    namespace = f"fwbench-scale-{uuid.uuid4().hex[:8]}"
    prefixes = [partition_prefix(namespace, "scale", i, partitions) for i in range(partitions)]
    counts = backlogs(tenants, args.jobs)
    plain = RedisBroker(client=client, namespace=namespace) if plan.dispatch == "dramatiq" else None
    try:
        for node in nodes:
            node.script_load(LUA.text)
        cpu_before = cpu_seconds(nodes)
        if plain is None:
            fill(client, prefixes, counts)
        else:
            plain_fill(plain, counts)
        enqueue_cpu = cpu_seconds(nodes) - cpu_before
        stop = threading.Event()
        fetchers = [
            Fetcher(client, prefixes, f"client{i}", args.batch, stop)
            if plain is None
            else PlainFetcher(plain, f"client{i}", args.batch, stop)
            for i in range(clients)
        ]
        per_node = [cpu_seconds([node]) for node in nodes]
        cpu_before, started = cpu_seconds(nodes), time.perf_counter()
        for fetcher in fetchers:
            fetcher.start()
        time.sleep(args.seconds)
        stop.set()
        for fetcher in fetchers:
            fetcher.join()
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(nodes) - cpu_before
        per_node = [cpu_seconds([node]) - before for node, before in zip(nodes, per_node, strict=True)]
    finally:
        for node in nodes:
            for pattern in ("{" + namespace + ":*", namespace + ":*"):
                keys = list(node.scan_iter(match=pattern, count=1000))
                for key in keys:
                    node.unlink(key)
    picks = [pick for fetcher in fetchers for pick in fetcher.picks]
    latencies = sorted(x for fetcher in fetchers for x in fetcher.latencies)
    jain_min, jain_raw = fairness(picks, counts, started)
    return {
        "tenants": tenants,
        "clients": clients,
        "redis": plan.redis_kind,
        "dispatch": plan.dispatch,
        "partitions": partitions,
        "jobs": sum(counts),
        "batch": args.batch,
        "picks_per_s": round(len(picks) / elapsed),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
        "redis_cpu_us_per_pick": round(cpu / len(picks) * 1e6, 1) if picks else None,
        "redis_cpu_us_per_enqueue": round(enqueue_cpu / sum(counts) * 1e6, 1),
        "cpu_share_by_master": [round(used / cpu, 2) for used in per_node] if cpu > 0 else [],
        "jain_min": round(jain_min, 3),
        "jain_raw": round(jain_raw, 3),
    }


def memory(client: redis.Redis, tenants: int) -> dict[str, Any]:
    """``used_memory`` per queued message: ``tenants`` messages from one tenant, then one from each.

    A tenant with nothing queued has no key (its FIFO, ring entry and counters go when they empty),
    so the second figure minus the first is what a tenant costs while it has work queued.
    """
    used = []
    for spread in (1, tenants):
        namespace = f"fwbench-mem-{uuid.uuid4().hex[:8]}"
        prefix = partition_prefix(namespace, "scale", 0, 1)
        counts = [1] * tenants if spread > 1 else [tenants]
        client.script_load(LUA.text)
        before = int(client.info("memory")["used_memory"])
        fill(client, [prefix], counts)
        used.append(int(client.info("memory")["used_memory"]) - before)
        for key in list(client.scan_iter(match="{" + namespace + ":*", count=1000)):
            client.delete(key)  # not UNLINK: a lazy free would be counted in the next measure
    return {
        "messages": tenants,
        "body_bytes": len(BODY),
        "bytes_per_message_one_tenant": round(used[0] / tenants),
        "bytes_per_message_one_per_tenant": round(used[1] / tenants),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int)
    parser.add_argument("--clients", type=int)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=8, help="messages per fetch call")
    parser.add_argument("--partitions", type=int, default=1, help="for a single configuration")
    parser.add_argument("--plain", action="store_true", help="one configuration on stock Dramatiq's script")
    parser.add_argument("--cluster", help="host:port of a Redis Cluster node: also run there")
    parser.add_argument("--memory", action="store_true", help="measure bytes per tenant and exit")
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration")
    args = parser.parse_args()
    url = os.environ.get("FAIRWAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    named = parse_redis_url(url)
    one = args.tenants is not None or args.clients is not None
    if named.mode == "cluster":
        if args.memory or not one:
            sys.exit("FAIRWAY_REDIS_URL names a cluster: give one configuration, or --cluster host:port")
        args.cluster = args.cluster or "{}:{}".format(*named.sentinels[0])  # its one configuration runs there
    # fairway's own factory: a redis+sentinel:// URL gives a client of the service's current master.
    single = redis_client(url, TlsSettings())
    if args.memory:
        print(json.dumps(memory(single, args.tenants or 10_000)))
        return
    plans: list[Plan] = []
    if one and not args.cluster:
        dispatch = "dramatiq" if args.plain else "fairway"
        plans.append(
            Plan(single, [single], "single", args.partitions, args.tenants or 10_000, args.clients or 1, dispatch)
        )
    elif not one:
        plans += [Plan(single, [single], "single", 1, 10_000, c) for c in (1, 10, 50, 100)]
        plans += [Plan(single, [single], "single", 1, 10_000, c, "dramatiq") for c in (1, 10, 50, 100)]
    if args.cluster:
        host, port = args.cluster.rsplit(":", 1)
        cluster: RedisCluster = RedisCluster(startup_nodes=[ClusterNode(host, int(port))], max_connections=256)
        masters = [redis.Redis(host=n.host, port=n.port) for n in cluster.get_primaries()]
        kind = f"cluster{len(masters)}"
        if one:
            plans.append(Plan(cluster, masters, kind, args.partitions, args.tenants or 10_000, args.clients or 1))
        else:
            plans += [Plan(cluster, masters, kind, p, 10_000, c) for p in (1, 3) for c in (1, 10, 50, 100)]
    if not args.json:
        print("| dispatch | Redis | partitions | clients | picks/s | p50 ms | p99 ms | CPU µs/pick | Jain min (raw) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for plan in plans:
        row = run_one(plan, args)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"| {plan.dispatch} | {plan.redis_kind} | {plan.partitions} | {plan.clients} "
                f"| {row['picks_per_s']:,} | {row['p50_ms']} | {row['p99_ms']} | {row['redis_cpu_us_per_pick']} "
                f"| {row['jain_min']} ({row['jain_raw']}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
