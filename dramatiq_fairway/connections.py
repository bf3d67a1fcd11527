"""Clients for the servers fairway talks to, with the TLS settings applied to the real client.

``FAIRWAY_TLS__*`` goes into redis-py's ``ssl_*`` arguments and into pika's ``SSLOptions``; a URL
alone would silently ignore them (the bug of the system fairway replaces).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import pika
import redis

from .embedded import EmbeddedRedis
from .settings import Settings, TlsSettings


def redis_client(url: str, tls: TlsSettings, **options: Any) -> redis.Redis:
    """A redis-py client for ``url`` (``redis://``, ``rediss://`` or ``unix://``)."""
    if urlsplit(url).scheme == "rediss":
        options.update(
            ssl_ca_certs=str(tls.ca_file) if tls.ca_file else None,
            ssl_certfile=str(tls.cert_file) if tls.cert_file else None,
            ssl_keyfile=str(tls.key_file) if tls.key_file else None,
            ssl_cert_reqs="required" if tls.verify else "none",
            ssl_check_hostname=tls.verify,
        )
    return redis.Redis.from_url(url, **options)


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
