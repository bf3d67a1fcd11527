"""Redis Cluster: the client fairway makes for a ``redis+cluster://`` URL, and what differs from one server.

Every key one script call touches shares a hash slot (docs/design.md, "Redis Cluster"), so the
same scripts run on one server and on a cluster. A fairway client is typed ``redis.Redis``
everywhere; a :class:`ClusterClient` stands in for it (redis-py's ``RedisCluster`` takes the same
commands), and the few places that must act differently ask :func:`is_cluster`: script pipelines
with ``WAIT`` (``store/scripts.py``), naming a client's connections (``connections.py``) and
``fairway check``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

__all__ = [
    "ClusterClient",
    "ClusterShape",
    "clients_near",
    "cluster_client",
    "cluster_shape",
    "is_cluster",
    "key_slot",
    "slot_of",
]


class ClusterClient(RedisCluster):
    """redis-py's ``RedisCluster`` that remembers how it was made, so a copy with other options
    (a client name) can be made from it."""

    def __init__(self, nodes: list[tuple[str, int]], **options: Any) -> None:
        super().__init__(startup_nodes=[ClusterNode(host, port) for host, port in nodes], **options)
        self.nodes = nodes
        self.options = options

    def renamed(self, name: str) -> redis.Redis:
        """A new client of the same cluster whose connections carry ``name``, replies as bytes."""
        return cluster_client(self.nodes, **{**self.options, "client_name": name, "decode_responses": False})


def cluster_client(nodes: list[tuple[str, int]], **options: Any) -> redis.Redis:
    """A cluster client started from ``nodes`` (it discovers the others), typed as the one-server
    client whose commands it takes."""
    return cast(redis.Redis, ClusterClient(nodes, **options))


@dataclass(frozen=True)
class ClusterShape:
    """What a cluster's nodes say of it now (``fairway check``)."""

    state: str
    masters: int
    replicas: int
    slots_covered: int


def cluster_shape(client: Any) -> ClusterShape:
    """The masters serving slots and the replicas that answer, and the slots served, as one node of
    ``client`` sees them now."""
    info = client.cluster_info()
    up = [node for node in client.cluster_nodes().values() if "fail" not in node["flags"] and node["connected"]]
    return ClusterShape(
        state=str(info["cluster_state"]),
        # A master with no slots serves nothing (a node whose role the others have not learnt yet).
        masters=sum("master" in node["flags"] and bool(node["slots"]) for node in up),
        replicas=sum("slave" in node["flags"] for node in up),
        slots_covered=int(info["cluster_slots_ok"]),
    )


def clients_near(client: Any, key: str) -> list[dict[str, str]]:
    """``CLIENT LIST`` of the server that holds ``key`` (on a cluster, the master of its slot)."""
    if is_cluster(client):
        return cast(list[dict[str, str]], client.client_list(target_nodes=client.get_node_from_key(key)))
    return cast(list[dict[str, str]], client.client_list())


def is_cluster(client: Any) -> bool:
    # A plain client answered first: RedisCluster's isinstance goes through typing's Protocol
    # check in Python (~0.4 µs), once per script pipeline, so on every send.
    return type(client) is not redis.Redis and isinstance(client, RedisCluster)


def slot_of(key: str | bytes) -> int:
    """The hash slot of ``key``, as ``CLUSTER KEYSLOT`` computes it (its ``{hash tag}`` when it has one)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))
