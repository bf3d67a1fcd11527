"""Clients for the servers fairway talks to, with the TLS settings applied to the real client.

``FAIRWAY_TLS__*`` goes into redis-py's ``ssl_*`` arguments and into pika's ``SSLOptions``; a URL
alone would silently ignore them (the bug of the system fairway replaces). Every Redis client of
fairway is made here, so a Sentinel URL (``redis_urls.py``) gives every one of them a client that
follows the current master, and a cluster URL a Redis Cluster client (``redis_cluster.py``) for
every one of them (docs/design.md, "Connections").
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import pika
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from .embedded import EmbeddedRedis
from .redis_cluster import ClusterClient, cluster_client, is_cluster
from .redis_urls import RedisUrl, parse_redis_url
from .settings import Settings, TlsSettings

# How long a call keeps retrying while Sentinel promotes a replica: about 14 s of attempts (a
# failover measured 2.3 s with down-after-milliseconds 1000), so a producer's send or a worker's
# fetch waits out a failover instead of failing. A caller's own ``retry=`` wins.
FAILOVER_RETRIES = 30
# A sentinel that does not answer within this is skipped for the next one.
SENTINEL_TIMEOUT = 2.0


def redis_client(url: str, tls: TlsSettings, **options: Any) -> redis.Redis:
    """A redis-py client for ``url``: one server (``redis://``, ``rediss://``, ``unix://``), the
    current master of a Sentinel service (``redis+sentinel://``, ``rediss+sentinel://``) or a
    Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    parsed = parse_redis_url(url)
    ssl_options = _ssl_options(tls) if parsed.tls else {}
    if parsed.mode == "sentinel":
        return _sentinel_master(parsed, ssl_options, options)
    if parsed.mode == "cluster":
        return _cluster(parsed, ssl_options, options)
    return redis.Redis.from_url(url, **ssl_options, **options)


def _ssl_options(tls: TlsSettings) -> dict[str, Any]:
    return {
        "ssl_ca_certs": str(tls.ca_file) if tls.ca_file else None,
        "ssl_certfile": str(tls.cert_file) if tls.cert_file else None,
        "ssl_keyfile": str(tls.key_file) if tls.key_file else None,
        "ssl_cert_reqs": "required" if tls.verify else "none",
        "ssl_check_hostname": tls.verify,
    }


class _FollowsMaster:
    """Asks the sentinels for the master on every socket connect.

    redis-py's own connection asks only in ``connect()``; a command or pipeline retried after a
    connection error reconnects through ``_connect()`` to the address it had, the dead master
    (redis-py issue #3874), and fails once its retries are spent.
    """

    connection_pool: Any  # the pool's SentinelConnectionPoolProxy, which the type stubs lack
    host: str
    port: int

    def _connect(self) -> Any:
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        return super()._connect()  # type: ignore[misc]


class MasterConnection(_FollowsMaster, SentinelManagedConnection):
    """A connection to a Sentinel service's current master."""


class MasterSSLConnection(_FollowsMaster, SentinelManagedSSLConnection):
    """A TLS connection to a Sentinel service's current master."""


def _sentinel_master(parsed: RedisUrl, ssl_options: dict[str, Any], options: dict[str, Any]) -> redis.Redis:
    """A client of the service's master; its connections ask the sentinels again on every connect,
    and a demoted master's ``READONLY`` reply is a connection error, so a failover costs retries,
    not a restart."""
    timeouts = {"socket_connect_timeout": SENTINEL_TIMEOUT, "socket_timeout": SENTINEL_TIMEOUT}
    sentinel_tls = {"ssl": True, **ssl_options} if parsed.tls else {}
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs={**timeouts, **sentinel_tls})
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), FAILOVER_RETRIES)
    return sentinel.master_for(
        parsed.service,
        connection_class=MasterSSLConnection if parsed.tls else MasterConnection,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **{"retry": retry, **ssl_options, **options},
    )


def _cluster(parsed: RedisUrl, ssl_options: dict[str, Any], options: dict[str, Any]) -> redis.Redis:
    """A cluster client; a failover (about 4 s with cluster-node-timeout 2000) costs a caller
    retries inside the call (the slot map is read again after a connection error), not an error."""
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), FAILOVER_RETRIES)
    tls = {"ssl": True, **ssl_options} if parsed.tls else {}
    credentials = {"username": parsed.username, "password": parsed.password}
    return cluster_client(list(parsed.sentinels), **{"retry": retry, **credentials, **tls, **options})


def named_client(client: redis.Redis, name: str) -> redis.Redis:
    """A client like ``client`` (same server or Sentinel service, credentials and TLS) whose
    connections carry ``name``.

    Its own pool, so naming never touches connections that other code shares with ``client``.
    Replies stay bytes: bodies are decoded by Dramatiq.
    """
    if isinstance(client, ClusterClient):
        return client.renamed(name)
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "client_name": name, "decode_responses": False}
    if isinstance(pool, SentinelConnectionPool):
        kwargs.pop("connection_pool")  # the old pool's proxy: the new pool sets its own
        named: redis.ConnectionPool = SentinelConnectionPool(
            pool.service_name,
            pool.sentinel_manager,
            connection_class=pool.connection_class,
            max_connections=pool.max_connections,
            is_master=pool.is_master,
            check_connection=pool.check_connection,
            **kwargs,
        )
    else:
        named = redis.ConnectionPool(
            connection_class=pool.connection_class, max_connections=pool.max_connections, **kwargs
        )
    return redis.Redis(connection_pool=named)


def master_address(client: redis.Redis) -> tuple[str, int] | None:
    """The address Sentinel gives for ``client``'s master now, or None for a one-server client or a cluster."""
    if is_cluster(client):
        return None
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        host, port = pool.get_master_address()
        return str(host), int(port)
    return None


def uses_embedded(settings: Settings) -> bool:
    """Whether the broker or the state store is the embedded Redis."""
    return settings.broker == "embedded" or (settings.broker == "rabbitmq" and not settings.state_url)


def broker_redis_url(settings: Settings) -> str:
    """The URL of the Redis that holds the queues (starting the embedded server if that is the one)."""
    if settings.broker == "embedded":
        server = EmbeddedRedis(settings.data_dir)
        server.ensure_running()
        return server.url()
    return settings.redis_url


def state_url(settings: Settings) -> str:
    """The URL of the state store: ``FAIRWAY_STATE_URL``, else the broker's Redis, else the embedded one."""
    if settings.state_url:
        return settings.state_url
    if settings.broker == "redis":
        return settings.redis_url
    server = EmbeddedRedis(settings.data_dir)
    server.ensure_running()
    return server.url()


def state_store_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client of the Redis that keeps fairway's shared state (breakers, dead letters, status, limits)."""
    return redis_client(state_url(settings), settings.tls, **options)


def rabbitmq_parameters(settings: Settings, **overrides: Any) -> list[pika.URLParameters]:
    """pika connection parameters for each URL of ``FAIRWAY_RABBITMQ_URL`` (comma-separated for a
    cluster), with the TLS settings applied: pika tries them in turn, so a connection (a first one
    or a reconnection) goes to the first node that answers."""
    nodes = []
    for url in settings.rabbitmq_url.split(","):
        parameters = pika.URLParameters(url.strip())
        if urlsplit(url.strip()).scheme == "amqps":
            parameters.ssl_options = pika.SSLOptions(_ssl_context(settings.tls), parameters.host)
        for name, value in overrides.items():
            setattr(parameters, name, value)
        nodes.append(parameters)
    return nodes


def _ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
