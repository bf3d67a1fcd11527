"""Redis URLs: one server, a Sentinel-watched master, and one-line errors that never show the password."""

from __future__ import annotations

import re

import pytest
import redis

from dramatiq_fairway.connections import MasterConnection, MasterSSLConnection, redis_client
from dramatiq_fairway.errors import ConfigError
from dramatiq_fairway.redis_urls import RedisUrl, parse_redis_url
from dramatiq_fairway.settings import TlsSettings, load_settings, mask_url


@pytest.mark.parametrize(
    ("url", "tls"), [("redis://127.0.0.1:6379/0", False), ("rediss://h:6380/1", True), ("unix:///tmp/r.sock", False)]
)
def test_single_server_schemes_are_single_mode(url: str, tls: bool) -> None:
    assert parse_redis_url(url) == RedisUrl(mode="single", tls=tls)


def test_sentinel_url_names_every_sentinel_the_service_and_the_db() -> None:
    parsed = parse_redis_url("redis+sentinel://:s%3Acret@10.0.0.1:26379,sentinel-b:26380,[::1]:26381/orders/3")
    assert parsed == RedisUrl(
        mode="sentinel",
        tls=False,
        sentinels=(("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381)),
        service="orders",
        db=3,
        password="s:cret",
    )


def test_sentinel_url_defaults_db_0_port_26379_and_reads_a_username() -> None:
    parsed = parse_redis_url("rediss+sentinel://app:pw@sentinel-a/mymaster")
    assert parsed.tls is True
    assert parsed.sentinels == (("sentinel-a", 26379),)
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == ("mymaster", 0, "app", "pw")


def test_a_cluster_url_names_its_startup_nodes_and_credentials() -> None:
    parsed = parse_redis_url("redis+cluster://:s%3Acret@10.0.0.1:7000,node-b:7001,[::1],node-c/0")
    assert parsed == RedisUrl(
        mode="cluster",
        tls=False,
        sentinels=(("10.0.0.1", 7000), ("node-b", 7001), ("::1", 6379), ("node-c", 6379)),
        password="s:cret",
    )
    assert parse_redis_url("rediss+cluster://app:pw@h:7000").tls


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://h:26379", "names no service"),
        ("redis+sentinel://h:26379/", "names no service"),
        ("redis+sentinel://h:26379/svc/x", "/service/db (db a number)"),
        ("redis+sentinel://h:26379/svc/1/2", "/service/db"),
        ("redis+sentinel://h:26379,/svc", "a sentinel without a host"),
        ("redis+sentinel://:pw@h:abc/svc", "not a number from 1 to 65535 ('h:abc')"),
        ("redis+sentinel://h:70000/svc", "not a number from 1 to 65535"),
        ("redis+sentinel://h:1/svc?ssl=1", "no ?query"),
        ("redis+cluster://", "names no node"),
        ("redis+cluster://h:7000,", "a node without a host"),
        ("redis+cluster://h:x", "a node port that is not a number from 1 to 65535 ('h:x')"),
        ("redis+cluster://h:7000/3", "only db 0"),
        ("rediss+cluster://h:7000?ssl=1", "no ?query"),
        ("http://h", "must start with redis://"),
    ],
)
def test_malformed_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_redis_url(url)


@pytest.mark.parametrize("variable", ["FAIRWAY_REDIS_URL", "FAIRWAY_STATE_URL"])
def test_a_malformed_sentinel_url_is_one_line_naming_the_variable_and_the_masked_value(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "redis+sentinel://:hunter2@a:1,b:2")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable}: 'redis+sentinel://:****@a:1,b:2' names no service")
    assert "\n" not in message
    assert "hunter2" not in message


def test_a_malformed_cluster_url_is_one_line_naming_the_variable_and_the_masked_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAIRWAY_REDIS_URL", "redis+cluster://:hunter2@a:1,b:x")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("FAIRWAY_REDIS_URL: 'redis+cluster://:****@a:1,b:x' has a node port")
    assert "\n" not in message
    assert "hunter2" not in message


def test_settings_accept_sentinel_urls_and_wait_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_REDIS_URL", "redis+sentinel://a:1,b:2/svc")
    monkeypatch.setenv("FAIRWAY_STATE_URL", "rediss+sentinel://:pw@a:1/svc/2")
    monkeypatch.setenv("FAIRWAY_REDIS_WAIT_REPLICAS", "1")
    settings = load_settings()
    assert settings.redis_url == "redis+sentinel://a:1,b:2/svc"
    assert settings.redis_wait_replicas == 1
    assert settings.masked()["state_url"] == "rediss+sentinel://:****@a:1/svc/2"


def test_negative_wait_replicas_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_REDIS_WAIT_REPLICAS", "-1")
    with pytest.raises(ConfigError, match="FAIRWAY_REDIS_WAIT_REPLICAS: '-1'"):
        load_settings()


def test_mask_url_masks_a_sentinel_url_with_several_hosts() -> None:
    assert mask_url("redis+sentinel://u:pw@a:1,b:2/svc/0") == "redis+sentinel://u:****@a:1,b:2/svc/0"
    assert mask_url("redis+sentinel://a:1,b:2/svc") == "redis+sentinel://a:1,b:2/svc"


def test_a_sentinel_client_asks_the_listed_sentinels_for_the_service_with_tls_applied() -> None:
    client = redis_client("rediss+sentinel://:pw@a:1,b:2/svc/4", TlsSettings(verify=False))
    pool = client.connection_pool
    sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    assert pool.service_name == "svc"  # type: ignore[attr-defined]
    addresses = [(s.get_connection_kwargs()["host"], s.get_connection_kwargs()["port"]) for s in sentinels]
    assert addresses == [("a", 1), ("b", 2)]
    assert pool.connection_class is MasterSSLConnection
    assert pool.connection_kwargs["db"] == 4
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    sentinel_kwargs = sentinels[0].connection_pool.connection_kwargs
    assert sentinel_kwargs["password"] is None
    assert sentinel_kwargs["ssl_cert_reqs"] == "none"


def test_a_master_connection_asks_the_sentinels_on_every_socket_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries reconnect through ``_connect``: it must not go back to the dead master's address."""
    connected: list[tuple[str, int]] = []
    monkeypatch.setattr(redis.connection.Connection, "_connect", lambda self: connected.append((self.host, self.port)))

    class Pool:
        is_master = True

        def get_master_address(self) -> tuple[str, int]:
            return ("10.0.0.2", 6380)

    connection = MasterConnection(connection_pool=Pool(), host="10.0.0.1", port=6379)
    connection._connect()
    assert connected == [("10.0.0.2", 6380)]
