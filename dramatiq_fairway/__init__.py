"""dramatiq-fairway: Dramatiq middleware that makes background jobs survive the real world."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .bulk import enqueue_many, group
from .connections import state_store_client
from .errors import (
    BreakerOpen,
    Cancelled,
    ConfigError,
    MessagesRefused,
    MessageTooLarge,
    PermanentError,
    QueueFull,
    RateLimited,
    SoftTimeLimitExceeded,
    TransientError,
)
from .middlewares.breaker import CircuitBreaker
from .middlewares.dead_letters import DeadLetters
from .middlewares.fairness import FairPriority
from .middlewares.metrics import Metrics
from .middlewares.pause import QueuePause
from .middlewares.retries import ClassifiedRetries
from .middlewares.status import JobStatus, progress
from .ops.controls import pause_queue, paused_queues, resume_queue
from .priority import Priority
from .settings import Settings, load_settings
from .setup import install, setup

try:
    # One source of truth for the version: pyproject.toml, as installed.
    __version__ = version("dramatiq-fairway")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BreakerOpen",
    "Cancelled",
    "CircuitBreaker",
    "ClassifiedRetries",
    "ConfigError",
    "DeadLetters",
    "FairPriority",
    "JobStatus",
    "MessageTooLarge",
    "MessagesRefused",
    "Metrics",
    "PermanentError",
    "Priority",
    "QueueFull",
    "QueuePause",
    "RateLimited",
    "Settings",
    "SoftTimeLimitExceeded",
    "TransientError",
    "__version__",
    "enqueue_many",
    "group",
    "install",
    "load_settings",
    "pause_queue",
    "paused_queues",
    "progress",
    "resume_queue",
    "setup",
    "state_store_client",
]
