"""The dashboard tests' settings: one test's namespace on the broker under test, or on Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from dramatiq import Broker

from dramatiq_fairway.brokers import build_broker
from dramatiq_fairway.settings import Settings

from ..support.dashboard_support import dashboard_settings


@pytest.fixture
def settings(broker_kind: str, namespace: str, short_tmp: Path, state_client: redis.Redis) -> Settings:
    return dashboard_settings(broker_kind, namespace, short_tmp)


@pytest.fixture
def redis_settings(namespace: str, short_tmp: Path, state_client: redis.Redis) -> Settings:
    return dashboard_settings("redis", namespace, short_tmp)


@pytest.fixture
def redis_broker(redis_settings: Settings) -> Iterator[Broker]:
    broker = build_broker(redis_settings)
    yield broker
    broker.close()
