"""Fairway's shared state in Redis (the state store): the only place that knows key names."""

from .breakers import BreakerState, BreakerStore, MemoryBreakerStore, RedisBreakerStore, StoreUnavailable

__all__ = ["BreakerState", "BreakerStore", "MemoryBreakerStore", "RedisBreakerStore", "StoreUnavailable"]
