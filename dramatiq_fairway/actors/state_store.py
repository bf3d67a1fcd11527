"""The state store the domain actors keep their Redis state in (rounds, crawls)."""

from __future__ import annotations

from functools import lru_cache

import redis

from ..connections import state_store_client
from ..settings import load_settings


@lru_cache(maxsize=1)
def state_store() -> tuple[redis.Redis, str]:
    """This process's state-store client and the namespace of its keys: one client, made on first use."""
    settings = load_settings()
    return state_store_client(settings), settings.namespace
