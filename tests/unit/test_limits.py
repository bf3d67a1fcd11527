"""Per-tenant limits (docs/limits.md) without a server: how the settings resolve per queue and tenant.
The dispatch script, the store, the CLI verbs and the limiter are in tests/middlewares/test_limits.py."""

from __future__ import annotations

from dramatiq_fairway.settings import LimitSettings, TenantLimit
from dramatiq_fairway.store.limits import settings_layer


def test_settings_layer_resolves_queue_then_tenant_then_default() -> None:
    limits = LimitSettings(
        tenants={"a": TenantLimit(max_concurrency=2), "b": TenantLimit(rate=5)},
        default=TenantLimit(max_concurrency=10),
        queues={"q": {"a": TenantLimit(rate=1.5), "*": TenantLimit(burst=3)}},
    )
    assert settings_layer(limits, "q") == {"a": "2|1.5|", "b": "|5|", "": "10||3"}
    assert settings_layer(limits, "other") == {"a": "2||", "b": "|5|", "": "10||"}
