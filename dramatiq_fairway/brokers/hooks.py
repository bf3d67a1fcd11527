"""Middleware hooks called only where a middleware defines them.

Dramatiq's ``Broker.emit_before``/``emit_after`` call every middleware's hook for every signal,
most of them the base class's ``pass``. The fairway stack adds a dozen middleware, so a job's four
worker-side signals (before/after ``process_message`` and ``ack``) would make about 70 calls of
which some 50 do nothing: a measurable share of a fast job's CPU (bench/hotpath.py). The fairway
brokers dispatch through :class:`OverriddenHooks` instead, with Dramatiq's semantics unchanged:
the same order, a ``MiddlewareError`` of a ``before`` hook propagates, any other error is logged
and the next middleware still runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from dramatiq import Broker, Middleware
from dramatiq.middleware import MiddlewareError

Hook = Callable[..., Any]
T = TypeVar("T")


class OverriddenHooks:
    """A broker mixin: ``emit_before``/``emit_after`` over the hooks middleware override, kept per signal.

    The table (hooks per signal, and whatever else :meth:`derived` keeps) is rebuilt whenever
    ``broker.middleware`` differs from the list it was built from, so middleware added, removed
    or replaced in place (as ``install()`` does) take effect at once. A hook patched onto a
    middleware *class* after the first emit is not seen.
    """

    middleware: list[Middleware]
    logger: Any

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for middleware, hook in self.hooks("before_" + signal):
            try:
                hook(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in before_%s of %r.", signal, middleware, exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for middleware, hook in self.hooks("after_" + signal):
            try:
                hook(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in after_%s of %r.", signal, middleware, exc_info=True)

    def hooks(self, name: str) -> list[tuple[Middleware, Hook]]:
        """(middleware, bound hook) of every middleware overriding ``name``, in the order Dramatiq
        calls them (``after_`` hooks last middleware first)."""
        hooks: list[tuple[Middleware, Hook]] | None = self._table().get(name)
        if hooks is None:
            ordered = reversed(self.middleware) if name.startswith("after_") else self.middleware
            hooks = self._table()[name] = [(m, getattr(m, name)) for m in ordered if _overrides(m, name)]
        return hooks

    def derived(self, key: str, compute: Callable[[list[Middleware]], T]) -> T:
        """``compute(middleware)``, kept until the middleware list changes (per-message lookups)."""
        table = self._table()
        if key not in table:
            table[key] = compute(list(self.middleware))
        value: T = table[key]
        return value

    def _table(self) -> dict[str, Any]:
        table: tuple[list[Middleware], dict[str, Any]] | None = getattr(self, "_hook_table", None)
        # List equality compares the middleware by identity first: one C loop, no Python per element.
        if table is None or table[0] != self.middleware:
            table = (list(self.middleware), {})
            self._hook_table = table
        return table[1]


def hooks_of(broker: Broker, name: str) -> list[tuple[Middleware, Hook]]:
    """``broker.hooks(name)``, for any broker: kept by the fairway brokers, listed anew by others."""
    if isinstance(broker, OverriddenHooks):
        return broker.hooks(name)
    return [(m, getattr(m, name)) for m in broker.middleware if _overrides(m, name)]


def derived_of(broker: Broker, key: str, compute: Callable[[list[Middleware]], T]) -> T:
    """``broker.derived(key, compute)``, for any broker: kept by the fairway brokers, computed anew by others."""
    if isinstance(broker, OverriddenHooks):
        return broker.derived(key, compute)
    return compute(list(broker.middleware))


def _overrides(middleware: Middleware, name: str) -> bool:
    # A middleware without the hook at all (a signal another library emits) is skipped, where
    # Dramatiq's emit would log a critical AttributeError for it on every emit.
    if not hasattr(middleware, name):
        return False
    if name in getattr(middleware, "__dict__", {}):
        return True
    return getattr(type(middleware), name) is not getattr(Middleware, name, None)
