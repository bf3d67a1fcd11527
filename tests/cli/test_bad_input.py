"""Bad input, table-driven: every bad setting or message option is refused with one line naming
the field and the value, and a worker given a bad configuration never half-starts.

Settings cases here extend the ones in ``test_settings.py::BAD_ENVIRONMENTS`` (none repeated).
Message and actor options run on both real brokers: the checks sit on the enqueue path, which
differs per broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Actor, Broker

from dramatiq_fairway.brokers.fair_redis import FairRedisBroker
from dramatiq_fairway.errors import ConfigError, FairwayError
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.settings import Settings, load_settings

from ..conftest import redis_for_tests
from ..support.fair_support import delete_namespace
from ..support.helpers import ROOT, settings_env

# -- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadSetting:
    env: dict[str, str]
    field: str
    value: str
    toml: str | None = None  # written to a file named by FAIRWAY_CONFIG


BAD_SETTINGS = {
    "max_message_bytes_below_minimum": BadSetting(
        {"FAIRWAY_MAX_MESSAGE_BYTES": "10"}, "FAIRWAY_MAX_MESSAGE_BYTES", "'10'"
    ),
    "state_url_scheme": BadSetting(
        {"FAIRWAY_STATE_URL": "http://u:pw@host"}, "FAIRWAY_STATE_URL", "http://u:****@host"
    ),
    "max_wait_zero": BadSetting({"FAIRWAY_FAIRNESS__MAX_WAIT": "0"}, "FAIRWAY_FAIRNESS__MAX_WAIT", "'0'"),
    "prefetch_negative": BadSetting({"FAIRWAY_FAIRNESS__PREFETCH": "-1"}, "FAIRWAY_FAIRNESS__PREFETCH", "'-1'"),
    "max_queued_zero": BadSetting(
        {"FAIRWAY_FAIRNESS__MAX_QUEUED_PER_TENANT": "0"}, "FAIRWAY_FAIRNESS__MAX_QUEUED_PER_TENANT", "'0'"
    ),
    "weights_not_a_map": BadSetting({"FAIRWAY_FAIRNESS__WEIGHTS": '["a"]'}, "FAIRWAY_FAIRNESS__WEIGHTS", "['a']"),
    "breaker_key_override": BadSetting(
        {"FAIRWAY_BREAKER__KEYS": '{"api": {"minimum_calls": 0}}'}, "FAIRWAY_BREAKER__KEYS", "minimum_calls"
    ),
    "breaker_key_unknown_field": BadSetting(
        {"FAIRWAY_BREAKER__KEYS": '{"api": {"minimun_calls": 5}}'}, "FAIRWAY_BREAKER__KEYS", "minimun_calls"
    ),
    "breaker_open_duration_negative": BadSetting(
        {"FAIRWAY_BREAKER__OPEN_DURATION": "-1"}, "FAIRWAY_BREAKER__OPEN_DURATION", "'-1'"
    ),
    "breaker_max_hold_zero": BadSetting({"FAIRWAY_BREAKER__MAX_HOLD": "0"}, "FAIRWAY_BREAKER__MAX_HOLD", "'0'"),
    "dlq_retention_zero": BadSetting({"FAIRWAY_DLQ__RETENTION_DAYS": "0"}, "FAIRWAY_DLQ__RETENTION_DAYS", "'0'"),
    "dlq_max_records_word": BadSetting({"FAIRWAY_DLQ__MAX_RECORDS": "many"}, "FAIRWAY_DLQ__MAX_RECORDS", "'many'"),
    "dlq_redact_not_a_list": BadSetting({"FAIRWAY_DLQ__REDACT": '"password"'}, "FAIRWAY_DLQ__REDACT", "'password'"),
    "dlq_redact_patterns_bad_regex": BadSetting(
        {"FAIRWAY_DLQ__REDACT_PATTERNS": '["(card"]'}, "FAIRWAY_DLQ__REDACT_PATTERNS", "'(card'"
    ),
    "status_failed_ttl_zero": BadSetting({"FAIRWAY_STATUS__FAILED_TTL": "0"}, "FAIRWAY_STATUS__FAILED_TTL", "'0'"),
    "metrics_max_tenants_zero": BadSetting(
        {"FAIRWAY_METRICS__MAX_TENANTS": "0"}, "FAIRWAY_METRICS__MAX_TENANTS", "'0'"
    ),
    "dashboard_port_negative": BadSetting({"FAIRWAY_DASHBOARD__PORT": "-5"}, "FAIRWAY_DASHBOARD__PORT", "'-5'"),
    "dashboard_read_only_word": BadSetting(
        {"FAIRWAY_DASHBOARD__READ_ONLY": "sometimes"}, "FAIRWAY_DASHBOARD__READ_ONLY", "'sometimes'"
    ),
    "limits_default_burst_zero": BadSetting(
        {"FAIRWAY_LIMITS__DEFAULT": '{"burst": 0}'}, "FAIRWAY_LIMITS__DEFAULT__BURST", "0"
    ),
    "limits_tenant_unknown_field": BadSetting(
        {"FAIRWAY_LIMITS__TENANTS": '{"acme": {"speed": 1}}'}, "FAIRWAY_LIMITS__TENANTS__ACME__SPEED", "1"
    ),
    "toml_bad_value": BadSetting({}, "FAIRWAY_BROKER", "'kafka'", toml='broker = "kafka"\n'),
    "toml_bad_nested_value": BadSetting({}, "FAIRWAY_METRICS__PORT", "'x'", toml='[metrics]\nport = "x"\n'),
    "toml_syntax_error": BadSetting({}, "FAIRWAY_CONFIG", "fairway.toml", toml="broker = [\n"),
}


@pytest.mark.parametrize("case", BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_bad_setting_is_one_line_naming_the_variable_and_value(
    case: BadSetting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if case.toml is not None:
        config = tmp_path / "fairway.toml"
        config.write_text(case.toml)
        monkeypatch.setenv("FAIRWAY_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    _assert_one_line_naming(str(caught.value), case.field, case.value)
    assert "pw@" not in str(caught.value)


def _assert_one_line_naming(message: str, field: str, value: str | None) -> None:
    assert "\n" not in message, message
    assert field in message, message
    if value is not None:
        assert value in message, message


# -- message and actor options --------------------------------------------------------------------

Action = Callable[[Broker, str], object]


@dataclass(frozen=True)
class BadOption:
    action: Action
    field: str
    value: str | None


def _actor(broker: Broker, queue_name: str, **options: Any) -> Actor[Any, Any]:
    @dramatiq.actor(broker=broker, queue_name=queue_name, actor_name=f"bad_input_{queue_name}", **options)
    def job(item: int, user_id: str = "u1", note: str = "") -> None:
        raise AssertionError("never runs: every case is refused before it is enqueued")

    return job


def send(**options: Any) -> Action:
    """Send one message with ``options`` (``args`` replaces the default arguments)."""
    args = options.pop("args", (1,))
    return lambda broker, queue_name: _actor(broker, queue_name).send_with_options(args=args, **options)


def declare(**options: Any) -> Action:
    """Declare the actor with ``options``."""
    return lambda broker, queue_name: _actor(broker, queue_name, **options)


def send_to(actor_options: dict[str, Any], **options: Any) -> Action:
    """Declare the actor with ``actor_options``, then send with ``options``."""
    args = options.pop("args", (1,))
    return lambda broker, queue_name: _actor(broker, queue_name, **actor_options).send_with_options(
        args=args, **options
    )


BAD_OPTIONS = {
    "priority_level_unknown_name": BadOption(send(priority_level="urgent"), "priority_level", "'urgent'"),
    "priority_level_out_of_range": BadOption(send(priority_level=9), "priority_level", "9"),
    "tenant_empty": BadOption(send(tenant=""), "tenant", "''"),
    "tenant_not_a_string": BadOption(send(tenant=42), "tenant", "42"),
    "tenant_too_long": BadOption(send(tenant="t" * 129), "tenant", "'ttttt"),
    "tenant_with_newline": BadOption(send(tenant="acme\nevil"), "tenant", "'acme\\nevil'"),
    "breaker_not_a_string": BadOption(send(breaker=5), "breaker", "5"),
    "breaker_a_list": BadOption(send(breaker=["api"]), "breaker", "['api']"),
    "backoff_unknown": BadOption(send(backoff="linear"), "backoff", "'linear'"),
    "retry_for_a_class_per_message": BadOption(send(retry_for=ValueError), "retry_for", "ValueError"),
    "dont_retry_for_not_names": BadOption(send(dont_retry_for=[1]), "dont_retry_for", "[1]"),
    "max_retries_negative": BadOption(send(max_retries=-1), "max_retries", "-1"),
    "max_retries_a_string": BadOption(send(max_retries="3"), "max_retries", "'3'"),
    "min_backoff_a_float": BadOption(send(min_backoff=1.5), "min_backoff", "1.5"),
    "max_backoff_a_bool": BadOption(send(max_backoff=True), "max_backoff", "True"),
    "tenant_from_arguments_do_not_bind": BadOption(
        send_to({"tenant_from": "user_id"}, args=()), "tenant_from", "'item'"
    ),
    "actor_priority_level_unknown": BadOption(declare(priority_level="urgent"), "priority_level", "'urgent'"),
    "actor_tenant_from_no_such_parameter": BadOption(declare(tenant_from="account"), "tenant_from", "'account'"),
    "actor_backoff_unknown": BadOption(declare(backoff="linear"), "backoff", "'linear'"),
    "actor_retry_for_not_exceptions": BadOption(declare(retry_for=[42]), "retry_for", "42"),
    "actor_breaker_not_a_string": BadOption(declare(breaker=5), "breaker", "5"),
    "actor_option_misspelt": BadOption(declare(priorty_level=1), "priorty_level", None),
    "unique_key_not_a_string": BadOption(send(unique_key=123), "unique_key", "123"),
    "soft_time_limit_not_a_number": BadOption(send(soft_time_limit="soon"), "soft_time_limit", "'soon'"),
    "soft_time_limit_negative": BadOption(send(soft_time_limit=-5), "soft_time_limit", "-5"),
    "track_status_not_a_bool": BadOption(send(track_status="no"), "track_status", "'no'"),
    "option_not_json_serialisable": BadOption(send(ticket={1, 2}), "ticket", "{1, 2}"),
    "message_too_large": BadOption(send(args=(1, "u1", "x" * 2_000_000)), "FAIRWAY_MAX_MESSAGE_BYTES", "1048576"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS.values(), ids=BAD_OPTIONS.keys())
def test_bad_option_is_refused_with_one_line_naming_the_field_and_value(
    case: BadOption, broker: Broker, queue_name: str
) -> None:
    with pytest.raises((ValueError, TypeError, FairwayError)) as caught:
        case.action(broker, queue_name)
    _assert_one_line_naming(str(caught.value), case.field, case.value)
    if isinstance(broker, FairRedisBroker):
        assert broker.join_size(queue_name) == 0, "a refused message must not be enqueued"


def test_the_table_has_at_least_twenty_distinct_bad_inputs() -> None:
    assert len(BAD_SETTINGS) + len(BAD_OPTIONS) >= 20
    assert len(BAD_OPTIONS) >= 20


# -- a worker with a bad configuration ------------------------------------------------------------

BAD_WORKER_ENV = {"FAIRWAY_BREAKER__MINIMUM_CALLS": "0"}
BAD_WORKER_LINE = "FAIRWAY_BREAKER__MINIMUM_CALLS: '0'"


@pytest.fixture
def bad_worker(namespace: str, short_tmp: Path) -> Iterator[tuple[FairRedisBroker, subprocess.CompletedProcess[str]]]:
    """Run ``dramatiq dramatiq_fairway.actors`` with a bad setting, a message waiting on its queue."""
    settings = Settings(broker="redis", namespace=namespace, data_dir=short_tmp)
    client = redis_for_tests()
    producer = FairRedisBroker(client=client, namespace=namespace, settings=settings)
    waiting: dramatiq.Message[Any] = dramatiq.Message(
        queue_name="papers", actor_name="fetch_paper_metadata", args=(), kwargs={}, options={}
    )
    producer.push_body("papers", waiting.encode(), level=Priority.NORMAL, tenant="default")
    env = {**settings_env(settings), **BAD_WORKER_ENV, "FAIRWAY_METRICS__PORT": "0", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dramatiq", "dramatiq_fairway.actors", "--processes", "1", "--threads", "1"],
        cwd=ROOT,
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    yield producer, result
    producer.close()
    delete_namespace(client, namespace)
    client.close()


def _base_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("FAIRWAY_")}


def test_worker_with_bad_config_exits_non_zero_and_never_half_starts(
    bad_worker: tuple[FairRedisBroker, subprocess.CompletedProcess[str]],
) -> None:
    producer, result = bad_worker
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert BAD_WORKER_LINE in output
    assert "ready for action" not in output
    # Nothing consumed, nothing registered: the waiting message is still ready, no worker beat.
    assert producer.queue_depths("papers")[0]["ready"] == 1
    assert producer.queue_depths("papers")[0]["in_flight"] == 0
    assert producer.client.zcard(producer._workers_key("heartbeats")) == 0


def test_worker_with_bad_config_says_so_in_one_line(
    bad_worker: tuple[FairRedisBroker, subprocess.CompletedProcess[str]],
) -> None:
    _producer, result = bad_worker
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert len([line for line in output.splitlines() if BAD_WORKER_LINE in line]) == 1, output
