"""What ``fairway check`` reports: the effective settings and whether each server answers."""

from __future__ import annotations

from typing import Any

import pika
import redis
from pydantic import BaseModel
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..connections import (
    broker_redis_url,
    master_address,
    rabbitmq_parameters,
    redis_client,
    state_url,
    uses_embedded,
)
from ..redis_cluster import cluster_shape, is_cluster
from ..redis_urls import parse_redis_url
from ..settings import Settings, mask_url

_TIMEOUT = 3.0

# What each feature does while the state store is down and the broker is up
# (docs/design.md, "When the state store is down").
DEGRADATION = {
    "retries": "classify locally",
    "breakers": "per-process state",
    "dead letters": "local spool file, replayed when the store returns; no ack before a record is written",
    "status and progress": "dropped and counted",
    "unique_key": "fail-open (the job runs) unless the actor sets unique_strict=True",
    "limits on RabbitMQ": "not enforced",
    "tenant queues on RabbitMQ": "new messages go to their hashed lanes; counts heal when the store returns",
}


class ServerCheck(BaseModel):
    role: str
    kind: str
    url: str
    reachable: bool
    version: str | None = None
    error: str | None = None
    # Redis only: "single", "sentinel" or "cluster"; the master Sentinel named; replicas the master
    # has (on a cluster: every replica that answers).
    mode: str | None = None
    master: str | None = None
    replicas: int | None = None
    # Redis Cluster only: masters that answer and hash slots served (of 16384).
    masters: int | None = None
    slots_covered: int | None = None


class CheckReport(BaseModel):
    settings: dict[str, Any]
    broker: ServerCheck
    state_store: ServerCheck
    warnings: list[str]
    degradation: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.broker.reachable and self.state_store.reachable

    def failure(self) -> str:
        """One line naming the first server that did not answer."""
        bad = self.broker if not self.broker.reachable else self.state_store
        return f"{bad.role} ({bad.kind}) at {bad.url} did not answer: {bad.error}"


def check(settings: Settings) -> CheckReport:
    """Ping the broker and the state store, with short timeouts; never raises for an unreachable server."""
    if settings.broker == "rabbitmq":
        broker = _check_rabbitmq(settings)
    else:
        broker = _check_redis("broker", settings.broker, lambda: broker_redis_url(settings), settings)
    store_kind = "embedded" if uses_embedded(settings) and not settings.state_url else "redis"
    state_store = _check_redis("state store", store_kind, lambda: state_url(settings), settings)
    warnings = []
    if settings.broker == "rabbitmq" and store_kind == "embedded":
        warnings.append(
            "the broker is RabbitMQ but the state store is the embedded Redis: breakers, limits and "
            "dead letters are per host; set FAIRWAY_STATE_URL to share them"
        )
    return CheckReport(
        settings=settings.masked(),
        broker=broker,
        state_store=state_store,
        warnings=warnings,
        degradation=DEGRADATION,
    )


def _check_redis(role: str, kind: str, url_of: Any, settings: Settings) -> ServerCheck:
    url = ""
    mode = None
    try:
        url = url_of()
        mode = parse_redis_url(url).mode
        # One attempt: a check reports a failover in progress rather than waiting it out.
        client = redis_client(
            url, settings.tls, socket_connect_timeout=_TIMEOUT, socket_timeout=_TIMEOUT, retry=Retry(NoBackoff(), 0)
        )
        master = master_address(client)
        info = client.info()
        shape = cluster_shape(client) if is_cluster(client) else None
        client.close()
    except (redis.RedisError, OSError, RuntimeError) as error:
        return ServerCheck(
            role=role, kind=kind, url=mask_url(url), reachable=False, error=_one_line(error, url), mode=mode
        )
    return ServerCheck(
        role=role,
        kind=kind,
        url=mask_url(url),
        reachable=True,
        version=str(info["redis_version"]),
        mode=mode,
        master=f"{master[0]}:{master[1]}" if master else None,
        replicas=shape.replicas if shape else int(info.get("connected_slaves", 0)),
        masters=shape.masters if shape else None,
        slots_covered=shape.slots_covered if shape else None,
    )


def _check_rabbitmq(settings: Settings) -> ServerCheck:
    url = settings.rabbitmq_url
    try:
        parameters = rabbitmq_parameters(
            settings, socket_timeout=_TIMEOUT, blocked_connection_timeout=_TIMEOUT, connection_attempts=1
        )
        connection = pika.BlockingConnection(parameters)
        properties = connection._impl.server_properties
        version = properties.get("version", b"?")
        connection.close()
    except (pika.exceptions.AMQPError, OSError) as error:
        return ServerCheck(
            role="broker", kind="rabbitmq", url=mask_url(url), reachable=False, error=_one_line(error, url)
        )
    return ServerCheck(
        role="broker",
        kind="rabbitmq",
        url=mask_url(url),
        reachable=True,
        version=version.decode() if isinstance(version, bytes) else str(version),
    )


def _one_line(error: BaseException, url: str) -> str:
    detail = str(error) or repr(error)
    text = " ".join(detail.split())
    if not text.startswith(type(error).__name__):
        text = f"{type(error).__name__}: {text}"
    if url.startswith("amqp"):
        # A cluster's URLs may each carry their own password.
        passwords = [pika.URLParameters(node_url.strip()).credentials.password for node_url in url.split(",")]
    else:
        passwords = [_redis_password(url)] if "@" in url else []
    for password in passwords:
        if password:
            text = text.replace(password, "****")
    return text


def _redis_password(url: str) -> str | None:
    try:
        parsed = parse_redis_url(url)
    except ValueError:
        return None
    if parsed.mode != "single":
        return parsed.password
    return redis.connection.parse_url(url).get("password")
