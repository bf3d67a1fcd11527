"""What a ``FAIRWAY_REDIS_URL`` / ``FAIRWAY_STATE_URL`` names: one server, or a Sentinel-watched master.

``redis://``, ``rediss://`` and ``unix://`` name one server (redis-py parses them). ``redis+sentinel://
[user:password@]host:port[,host:port...]/service[/db]`` names the master Sentinel knows as ``service``;
``rediss+sentinel://`` speaks TLS to the sentinels and to the master. The password is the master's
(and its replicas'): the sentinels are asked without one. ``redis+cluster://[user:password@]host:port
[,host:port...]`` names a Redis Cluster by some of its nodes (the client discovers the rest);
``rediss+cluster://`` speaks TLS to every node. A cluster has only db 0, so the URL has no path
(docs/design.md, "Connections").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_PORT = 26379
CLUSTER_PORT = 6379


@dataclass(frozen=True)
class RedisUrl:
    """A parsed Redis URL; for ``single`` only ``mode`` and ``tls`` are filled (redis-py reads the rest)."""

    mode: Literal["single", "sentinel", "cluster"]
    tls: bool
    # The sentinels' addresses, or a cluster's startup nodes.
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_redis_url(url: str) -> RedisUrl:
    """The parsed ``url``; ``ValueError`` with one line saying what is wrong (never the password)."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme in SINGLE_SCHEMES:
        return RedisUrl(mode="single", tls=scheme == "rediss")
    if scheme in CLUSTER_SCHEMES:
        return _parse_cluster(url, tls=scheme == "rediss+cluster")
    if scheme not in SENTINEL_SCHEMES:
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, "
            "redis+cluster:// or rediss+cluster://"
        )
    return _parse_sentinel(url, tls=scheme == "rediss+sentinel")


def _parse_cluster(url: str, *, tls: bool) -> RedisUrl:
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError("takes no ?query or #fragment")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("has a path: a Redis Cluster has only db 0 (redis+cluster://host:port[,host:port...])")
    userinfo, _at, hosts = parts.netloc.rpartition("@")
    username, _colon, password = userinfo.partition(":")
    if not hosts:
        raise ValueError("names no node: redis+cluster://host:port[,host:port...]")
    nodes = tuple(_address(item, default_port=CLUSTER_PORT, role="node") for item in hosts.split(","))
    return RedisUrl(
        mode="cluster",
        tls=tls,
        sentinels=nodes,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def _parse_sentinel(url: str, *, tls: bool) -> RedisUrl:
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError("takes no ?query or #fragment")
    userinfo, _at, hosts = parts.netloc.rpartition("@")
    username, _colon, password = userinfo.partition(":")
    sentinels = tuple(_address(item) for item in hosts.split(","))
    path = [unquote(item) for item in parts.path.split("/")[1:]]
    if not path or not path[0]:
        raise ValueError("names no service: redis+sentinel://host:port[,host:port...]/service[/db]")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("has a path other than /service or /service/db (db a number)")
    return RedisUrl(
        mode="sentinel",
        tls=tls,
        sentinels=sentinels,
        service=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def _address(item: str, *, default_port: int = SENTINEL_PORT, role: str = "sentinel") -> tuple[str, int]:
    host, colon, port = item.rpartition(":") if not item.endswith("]") else (item, "", "")
    if not colon:
        host, port = item, str(default_port)
    host = host.removeprefix("[").removesuffix("]")
    if not host:
        raise ValueError(f"has a {role} without a host ({item!r}): list them as host:port,host:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"has a {role} port that is not a number from 1 to 65535 ({item!r})")
    return host, int(port)
