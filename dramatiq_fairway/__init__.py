"""dramatiq-fairway: Dramatiq middleware that makes background jobs survive the real world."""

from __future__ import annotations

from .connections import state_store_client
from .controls import QueuePause, pause_queue, paused_queues, resume_queue
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
from .middlewares.breaker import CircuitBreaker
from .middlewares.dead_letters import DeadLetters
from .middlewares.fairness import FairPriority
from .middlewares.metrics import Metrics
from .middlewares.retries import ClassifiedRetries
from .middlewares.status import JobStatus, progress
from .priority import Priority
from .settings import Settings, load_settings
from .setup import install, setup

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
    "Metrics",
    "PermanentError",
    "Priority",
    "QueueFull",
    "QueuePause",
    "RateLimited",
    "Settings",
    "SoftTimeLimitExceeded",
    "TransientError",
    "install",
    "load_settings",
    "pause_queue",
    "paused_queues",
    "progress",
    "resume_queue",
    "setup",
    "state_store_client",
]
