"""Settings: environment, TOML, and one-line errors that name the variable and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from dramatiq_fairway.errors import ConfigError
from dramatiq_fairway.settings import Settings, load_settings, mask_url


def test_defaults_match_the_design() -> None:
    settings = Settings()
    assert settings.broker == "embedded"
    assert settings.namespace == "fairway"
    assert settings.metrics.port == 9464
    assert settings.status.ttl == 3600
    assert settings.status.failed_ttl == 604800
    assert settings.breaker.minimum_calls == 10
    assert settings.fairness.max_wait == 300
    assert "dramatiq-fairway" in str(settings.data_dir)


def test_environment_with_nested_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_BROKER", "rabbitmq")
    monkeypatch.setenv("FAIRWAY_TLS__VERIFY", "false")
    monkeypatch.setenv("FAIRWAY_FAIRNESS__WEIGHTS", '{"acme": 3}')
    monkeypatch.setenv("FAIRWAY_LIMITS__TENANTS", '{"acme": {"max_concurrency": 2, "rate": 5.5}}')
    settings = load_settings()
    assert settings.broker == "rabbitmq"
    assert settings.tls.verify is False
    assert settings.fairness.weights == {"acme": 3}
    assert settings.limits.tenants["acme"].max_concurrency == 2


def test_toml_file_named_by_fairway_config_and_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "fairway.toml"
    config.write_text('broker = "redis"\nnamespace = "fromfile"\n[metrics]\nport = 9999\n')
    monkeypatch.setenv("FAIRWAY_CONFIG", str(config))
    monkeypatch.setenv("FAIRWAY_NAMESPACE", "fromenv")
    settings = load_settings()
    assert settings.broker == "redis"
    assert settings.metrics.port == 9999
    assert settings.namespace == "fromenv"


BAD_ENVIRONMENTS = [
    ({"FAIRWAY_BROKER": "kafka"}, "FAIRWAY_BROKER: 'kafka' is not one of redis, rabbitmq, embedded"),
    ({"FAIRWAY_REDIS_URL": "http://x"}, "FAIRWAY_REDIS_URL: 'http://x' must start with redis://"),
    ({"FAIRWAY_RABBITMQ_URL": "redis://x"}, "FAIRWAY_RABBITMQ_URL: 'redis://x' must start with amqp://"),
    ({"FAIRWAY_RABBITMQ_URL": "amqp://a/%2F,redis://b"}, "FAIRWAY_RABBITMQ_URL: 'amqp://a/%2F,redis://b' must start"),
    (
        {"FAIRWAY_RABBITMQ__QUEUE_TYPE": "mirrored"},
        "FAIRWAY_RABBITMQ__QUEUE_TYPE: 'mirrored' is not one of classic, quorum",
    ),
    ({"FAIRWAY_METRICS__PORT": "70000"}, "FAIRWAY_METRICS__PORT: '70000' input should be less than or equal to 65535"),
    ({"FAIRWAY_METRICS__PORT": "abc"}, "FAIRWAY_METRICS__PORT: 'abc'"),
    ({"FAIRWAY_FAIRNESS__WEIGHTS": '{"a": 0}'}, "FAIRWAY_FAIRNESS__WEIGHTS:"),
    ({"FAIRWAY_FAIRNESS__WEIGHTS": "{oops"}, "FAIRWAY_FAIRNESS__WEIGHTS: '{oops' is not valid JSON"),
    ({"FAIRWAY_RETRIES__UNKNOWN": "maybe"}, "FAIRWAY_RETRIES__UNKNOWN: 'maybe' is not one of retry, fail"),
    ({"FAIRWAY_RETRIES__TRANSIENT_PATTERNS": '["("]'}, "FAIRWAY_RETRIES__TRANSIENT_PATTERNS:"),
    ({"FAIRWAY_BREAKER__FAILURE_RATE_THRESHOLD": "1.5"}, "FAIRWAY_BREAKER__FAILURE_RATE_THRESHOLD: '1.5'"),
    ({"FAIRWAY_BREAKER__MINIMUM_CALLS": "0"}, "FAIRWAY_BREAKER__MINIMUM_CALLS: '0'"),
    ({"FAIRWAY_STATUS__TTL": "-1"}, "FAIRWAY_STATUS__TTL: '-1'"),
    ({"FAIRWAY_NAMESPACE": "has space"}, "FAIRWAY_NAMESPACE: 'has space'"),
    ({"FAIRWAY_HEARTBEAT_TIMEOUT": "0"}, "FAIRWAY_HEARTBEAT_TIMEOUT: '0'"),
    ({"FAIRWAY_LIMITS__TENANTS": '{"a": {"rate": -1}}'}, "FAIRWAY_LIMITS__TENANTS__A__RATE: -1"),
    ({"FAIRWAY_TLS__VERIFY": "perhaps"}, "FAIRWAY_TLS__VERIFY: 'perhaps'"),
]


@pytest.mark.parametrize(("environment", "expected"), BAD_ENVIRONMENTS)
def test_bad_values_give_one_line_naming_the_variable(
    environment: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_missing_config_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_CONFIG", "/nonexistent/fairway.toml")
    with pytest.raises(ConfigError, match=r"FAIRWAY_CONFIG: '/nonexistent/fairway\.toml' is not a file"):
        load_settings()


def test_passwords_never_appear_in_errors_or_masked_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_REDIS_URL", "http://user:hunter2@host")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    settings = Settings(
        redis_url="redis://:hunter2@h:6379/0",
        rabbitmq_url="amqp://u:hunter2@h/%2F",
        dashboard={"password": "hunter2"},  # type: ignore[arg-type]
    )
    assert "hunter2" not in str(settings.masked())
    assert "hunter2" not in repr(settings.dashboard)


def test_mask_url_keeps_everything_but_the_password() -> None:
    assert mask_url("redis://:pw@127.0.0.1:6380/2") == "redis://:****@127.0.0.1:6380/2"
    assert mask_url("amqps://guest:pw@rabbit/%2F") == "amqps://guest:****@rabbit/%2F"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_mask_url_masks_every_node_of_a_cluster() -> None:
    urls = "amqp://u:pw1@r1:5672/%2F,amqp://u:pw2@r2:5672/%2F"
    assert mask_url(urls) == "amqp://u:****@r1:5672/%2F,amqp://u:****@r2:5672/%2F"


def test_rabbitmq_queue_type_defaults_to_classic_and_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAIRWAY_RABBITMQ__QUEUE_TYPE", raising=False)
    assert load_settings().rabbitmq.queue_type == "classic"
    monkeypatch.setenv("FAIRWAY_RABBITMQ__QUEUE_TYPE", "quorum")
    assert load_settings().rabbitmq.queue_type == "quorum"
