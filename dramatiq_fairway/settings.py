"""Every fairway setting, read from ``FAIRWAY_*`` environment variables and an optional TOML file.

Nested settings use ``__`` (``FAIRWAY_TLS__CA_FILE``). ``FAIRWAY_CONFIG`` names a TOML file whose
keys are the field names (``broker = "redis"``, ``[tls] ca_file = ...``); the environment wins
over the file. Anything invalid raises :class:`ConfigError` with one line naming the variable and
the value, never a pydantic traceback.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from .encryption.keyring import decode_key
from .errors import ConfigError
from .redis_urls import parse_redis_url

ENV_PREFIX = "FAIRWAY_"
SECRET_WORDS = ("password", "secret", "token", "api_key", "authorization", "cookie")

BrokerKind = Literal["redis", "rabbitmq", "embedded"]
S = TypeVar("S", bound=BaseSettings)
# Settings whose values are key material: an error names them, and never shows what they hold.
_SECRET_SECTION = f"{ENV_PREFIX}ENCRYPTION__KEYS"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True


class MetricsSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    max_tenants: int = Field(100, ge=1)


class FairnessSettings(_Section):
    weights: dict[str, float] = {}
    max_queued_per_tenant: int | None = Field(None, ge=1)
    max_wait: float = Field(300, gt=0)
    prefetch: int | None = Field(None, ge=0)
    rabbitmq_lanes: int = Field(4, ge=1, le=64)
    rabbitmq_isolate_at: int = Field(50, ge=1)
    # Redis: hash-tagged partitions one queue is split over (docs/design.md, "Partitions").
    partitions: int = Field(1, ge=1, le=64)

    @field_validator("weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        for tenant, weight in weights.items():
            if weight <= 0:
                raise ValueError(f"weight of tenant {tenant!r} must be > 0, got {weight!r}")
        return weights


class RetrySettings(_Section):
    unknown: Literal["retry", "fail"] = "retry"
    transient_patterns: list[str] = []
    permanent_patterns: list[str] = []

    @field_validator("transient_patterns", "permanent_patterns")
    @classmethod
    def _compilable(cls, patterns: list[str]) -> list[str]:
        return _compilable_patterns(patterns)


def _compilable_patterns(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
    return patterns


class BreakerPolicy(_Section):
    """How one breaker decides (resilience4j's model); times in seconds."""

    failure_rate_threshold: float = Field(0.5, gt=0, le=1)
    minimum_calls: int = Field(10, ge=1)
    # "count": the window is the last window_size calls; "time": the calls of the last
    # window_duration seconds, kept in per-second buckets (capped so one script call stays cheap).
    window_type: Literal["count", "time"] = "count"
    window_size: int = Field(20, ge=1)
    window_duration: int = Field(60, ge=1, le=3600)
    open_duration: float = Field(30, gt=0)
    half_open_max_calls: int = Field(3, ge=1)
    # Each consecutive opening (half-open trials failed again) waits this many times longer, up to
    # max_open_duration, so a long outage is probed less and less often.
    open_duration_factor: float = Field(2.0, ge=1)
    max_open_duration: float = Field(600, gt=0)
    # A call slower than slow_call_duration counts as slow; a window whose slow share reaches
    # slow_call_rate_threshold opens the breaker as failures do. None: duration is not considered.
    slow_call_duration: float | None = Field(None, gt=0)
    slow_call_rate_threshold: float = Field(1.0, gt=0, le=1)
    # A half-open trial that reports no outcome within this time (its worker died) frees its slot.
    trial_timeout: float = Field(600, gt=0)


class BreakerSettings(BreakerPolicy):
    keys: dict[str, dict[str, float | str | None]] = {}
    max_hold: float = Field(86400, gt=0)

    @field_validator("keys")
    @classmethod
    def _valid_overrides(
        cls, keys: dict[str, dict[str, float | str | None]]
    ) -> dict[str, dict[str, float | str | None]]:
        for key, overrides in keys.items():
            try:
                BreakerPolicy(**overrides)
            except ValidationError as exc:
                error = exc.errors()[0]
                field = ".".join(str(part) for part in error["loc"])
                raise ValueError(f"breaker {key!r}: {field} {error['msg'].lower()}") from None
        return keys

    def policy_for(self, key: str, template: str | None = None) -> BreakerPolicy:
        """The policy of breaker ``key``: the defaults with ``keys[key]`` (else ``keys[template]``) applied.

        ``template`` is the unformatted option (``"api:{tenant}"``), so one override covers every tenant.
        """
        overrides = self.keys.get(key)
        if overrides is None and template is not None:
            overrides = self.keys.get(template)
        defaults = {name: getattr(self, name) for name in BreakerPolicy.model_fields}
        return BreakerPolicy(**{**defaults, **(overrides or {})})


class DlqSettings(_Section):
    retention_days: float = Field(30, gt=0)
    max_records: int = Field(1_000_000, ge=1)
    redact: list[str] = list(SECRET_WORDS)
    # Regexes whose matches are redacted wherever they occur (dramatiq_fairway/failures/redaction_rules.py).
    redact_patterns: list[str] = []

    @field_validator("redact_patterns")
    @classmethod
    def _compilable(cls, patterns: list[str]) -> list[str]:
        return _compilable_patterns(patterns)


class StatusSettings(_Section):
    ttl: int = Field(3600, ge=1)
    failed_ttl: int = Field(604800, ge=1)


class TenantLimit(_Section):
    max_concurrency: int | None = Field(None, ge=1)
    rate: float | None = Field(None, gt=0)
    burst: int | None = Field(None, ge=1)


class LimitSettings(_Section):
    """Per-tenant limits (docs/limits.md), resolved field by field: the queue's entry for the tenant
    (``queues``), the tenant's entry (``tenants``), the queue's default (``queues[q]["*"]``), then
    ``default``. A ``rate`` without ``burst`` allows a burst of one second's worth (at least 1)."""

    tenants: dict[str, TenantLimit] = {}
    default: TenantLimit | None = None
    queues: dict[str, dict[str, TenantLimit]] = {}
    exempt_critical: bool = True


class RabbitmqSettings(_Section):
    # "quorum": every AMQP queue fairway declares is a replicated quorum queue, for a cluster
    # (docs/design.md, "RabbitMQ queue layout"); changing it needs the queues migrated (406 otherwise).
    queue_type: Literal["classic", "quorum"] = "classic"


class LogSettings(_Section):
    # "json": one JSON object per line with the job's message id, actor, queue, tenant, attempt.
    format: Literal["text", "json"] = "text"


class TracingSettings(_Section):
    # OpenTelemetry spans (middlewares/tracing.py); the application configures the SDK.
    enabled: bool = False


class RecycleLimits(_Section):
    max_tasks: int | None = Field(None, ge=1)
    max_memory_mb: int | None = Field(None, ge=1)


class WorkerSettings(RecycleLimits):
    """When a worker process of the ``dramatiq`` command is replaced (middlewares/recycling.py):
    after ``max_tasks`` jobs, or once its resident memory is over ``max_memory_mb``; ``queues``
    overrides either for the jobs of one queue."""

    queues: dict[str, RecycleLimits] = {}

    def for_queue(self, queue_name: str) -> RecycleLimits:
        override = self.queues.get(queue_name)
        if override is None:
            return self
        return RecycleLimits(
            max_tasks=override.max_tasks or self.max_tasks,
            max_memory_mb=override.max_memory_mb or self.max_memory_mb,
        )

    @property
    def recycles(self) -> bool:
        return any(limits.max_tasks or limits.max_memory_mb for limits in (self, *self.queues.values()))


class EncryptionSettings(_Section):
    """AES-256-GCM of args and kwargs (docs/encryption.md): key id → base64 32-byte key, and the id
    new messages use. Off while ``keys`` is empty; a bad value is reported by key id, never by key."""

    keys: dict[str, SecretStr] = {}
    active: str | None = Field(None, validate_default=True)

    @field_validator("keys")
    @classmethod
    def _valid_keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for kid, secret in keys.items():
            decode_key(kid, secret.get_secret_value())
        return keys

    @field_validator("active")
    @classmethod
    def _known_active(cls, active: str | None, info: ValidationInfo) -> str | None:
        keys = info.data.get("keys")
        if keys is None:  # KEYS itself was invalid and is reported on its own
            return active
        if active is None and keys:
            raise ValueError(f"must name the key new messages use, one of {sorted(keys)}")
        if active is not None and active not in keys:
            known = ", ".join(sorted(keys)) or "none set"
            raise ValueError(f"is not a key id of {ENV_PREFIX}ENCRYPTION__KEYS ({known})")
        return active

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


class DashboardSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    read_only: bool = False


class ConfiguredSettings(BaseSettings):
    """A fairway settings class: frozen, read from arguments, the environment (other variables of
    the prefix ignored) and ``config_table`` of the ``FAIRWAY_CONFIG`` file (the top level when None)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)
    config_table: ClassVar[str | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 (fairway reads no .env file)
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return config_sources(settings_cls, init_settings, env_settings, table=cls.config_table)


def url_with_scheme(url: str, schemes: tuple[str, ...]) -> str:
    """``url`` if its scheme is one of ``schemes``; else the one-line reason a validator reports."""
    if urlsplit(url).scheme not in schemes:
        *first, last = (f"{scheme}://" for scheme in schemes)
        raise ValueError(f"must start with {', '.join(first)} or {last}")
    return url


class Settings(ConfiguredSettings):
    """dramatiq-fairway configuration (docs/design.md)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__")

    broker: BrokerKind = "embedded"
    redis_url: str = "redis://127.0.0.1:6379/0"
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    state_url: str | None = None
    # WAIT for this many replicas after enqueue, ack and dead-letter writes (docs/operations.md).
    redis_wait_replicas: int = Field(0, ge=0)
    data_dir: Path = Path(platformdirs.user_data_dir("dramatiq-fairway"))
    namespace: str = Field("fairway", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    heartbeat_timeout: float = Field(60, gt=0)
    max_message_bytes: int = Field(1_048_576, ge=1024)

    tls: TlsSettings = TlsSettings()
    metrics: MetricsSettings = MetricsSettings()
    fairness: FairnessSettings = FairnessSettings()
    retries: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    dlq: DlqSettings = DlqSettings()
    status: StatusSettings = StatusSettings()
    limits: LimitSettings = LimitSettings()
    dashboard: DashboardSettings = DashboardSettings()
    logs: LogSettings = LogSettings()
    workers: WorkerSettings = WorkerSettings()
    tracing: TracingSettings = TracingSettings()
    rabbitmq: RabbitmqSettings = RabbitmqSettings()
    encryption: EncryptionSettings = EncryptionSettings()

    @field_validator("redis_url", "state_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None:
            parse_redis_url(url)
        return url

    @field_validator("rabbitmq_url")
    @classmethod
    def _amqp_scheme(cls, url: str) -> str:
        # Several node URLs, comma-separated, for a cluster: each is tried in turn.
        for node_url in url.split(","):
            url_with_scheme(node_url.strip(), ("amqp", "amqps"))
        return url

    def masked(self) -> dict[str, Any]:
        """The effective settings as JSON-able data, with every secret masked."""
        data = self.model_dump(mode="json")
        for key in ("redis_url", "rabbitmq_url", "state_url"):
            if data[key]:
                data[key] = mask_url(data[key])
        if data["dashboard"]["password"]:
            data["dashboard"]["password"] = "****"
        return data


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``****``; each of several comma-separated URLs."""
    if "," in url:
        return ",".join(mask_url(part) for part in url.split(","))
    parts = urlsplit(url)
    # Split by hand: urlsplit's .password and .port refuse a Sentinel URL's host list.
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (at and colon and password):
        return url
    return urlunsplit(parts._replace(netloc=f"{user}:****@{hosts}"))


def config_sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
    table: str | None = None,
) -> tuple[PydanticBaseSettingsSource, ...]:
    """Where a fairway settings class reads from, first wins: arguments, environment, then
    ``[table]`` of the ``FAIRWAY_CONFIG`` TOML file (the top level when None; a missing table is empty)."""
    sources = [init_settings, env_settings]
    config_file = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        whole = TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file))
        if table is None:
            sources.append(whole)
        else:
            # pydantic-settings' toml_table_header raises KeyError on a file without the table.
            section = whole.toml_data.get(table, {})
            if not isinstance(section, dict):
                raise ConfigError(f"{ENV_PREFIX}CONFIG: {table!r} in {config_file!r} must be a table, not {section!r}")
            sources.append(InitSettingsSource(settings_cls, init_kwargs=section))
    return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; turn any validation failure into a one-line :class:`ConfigError`."""
    return read_settings(Settings, ENV_PREFIX, **overrides)


def read_settings(settings_cls: type[S], env_prefix: str, **overrides: Any) -> S:
    """``settings_cls(**overrides)``, any failure a one-line :class:`ConfigError` naming the
    environment variable (``env_prefix`` + field) and its value."""
    config_file = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"{ENV_PREFIX}CONFIG: {config_file!r} is not a file")
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, env_prefix)) from None
    except SettingsError as exc:
        raise ConfigError(_describe_unparsable(exc, env_prefix)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{ENV_PREFIX}CONFIG: {config_file!r} is not valid TOML ({exc})") from None


def _describe(exc: ValidationError, env_prefix: str) -> str:
    lines = []
    for error in exc.errors():
        location = [str(part) for part in error["loc"]]
        name = env_prefix + "__".join(location).upper()
        value = error.get("input")
        if isinstance(value, str) and name.endswith("_URL"):
            value = mask_url(value)
        elif name.startswith(_SECRET_SECTION) or any(word in name.lower() for word in SECRET_WORDS):
            value = "****"
        if error["type"] == "literal_error":
            allowed = ", ".join(re.findall(r"'([^']*)'", error["ctx"]["expected"]))
            reason = f"is not one of {allowed}"
        else:
            reason = error["msg"].removeprefix("Value error, ")
            reason = reason[0].lower() + reason[1:] if reason else reason
        lines.append(f"{name}: {value!r} {reason}")
    return "; ".join(lines)


def _describe_unparsable(exc: SettingsError, env_prefix: str) -> str:
    """Name the environment variable whose JSON value pydantic-settings could not parse."""
    match = re.search(r'field "([^"]+)"', str(exc))
    prefix = env_prefix + (match.group(1).upper() if match else "")
    for name, value in sorted(os.environ.items()):
        if not name.startswith(prefix):
            continue
        try:
            json.loads(value)
        except ValueError:
            if value.lstrip()[:1] in ("{", "["):
                shown = "****" if name.startswith(_SECRET_SECTION) else repr(value)
                return f"{name}: {shown} is not valid JSON"
    return str(exc).splitlines()[0]
