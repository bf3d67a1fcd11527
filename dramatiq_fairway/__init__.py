"""dramatiq-fairway: Dramatiq middleware that makes background jobs survive the real world."""

from __future__ import annotations

from .connections import state_store_client
from .errors import (
    BreakerOpen,
    Cancelled,
    ConfigError,
    MessageTooLarge,
    PermanentError,
    QueueFull,
    RateLimited,
    SoftTimeLimitExceeded,
    TransientError,
)
from .priority import Priority
from .settings import Settings, load_settings
from .setup import install, setup

__all__ = [
    "BreakerOpen",
    "Cancelled",
    "ConfigError",
    "MessageTooLarge",
    "PermanentError",
    "Priority",
    "QueueFull",
    "RateLimited",
    "Settings",
    "SoftTimeLimitExceeded",
    "TransientError",
    "install",
    "load_settings",
    "setup",
    "state_store_client",
]
