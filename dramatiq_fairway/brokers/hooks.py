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
from typing import Any

from dramatiq import Middleware
from dramatiq.middleware import MiddlewareError

Hook = Callable[..., Any]
# Per signal, the middleware overriding its hook and the bound hook, in the order they run.
HookTable = dict[str, list[tuple[Middleware, Hook]]]


class OverriddenHooks:
    """A broker mixin: ``emit_before``/``emit_after`` over the hooks middleware override, kept per signal.

    The table is rebuilt whenever ``broker.middleware`` differs from the list it was built from,
    so middleware added, removed or replaced in place (as ``install()`` does) take effect at once.
    """

    middleware: list[Middleware]
    logger: Any

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for middleware, hook in self._hooks("before_" + signal):
            try:
                hook(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical("Unexpected failure in before_%s of %r.", signal, middleware, exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for middleware, hook in self._hooks("after_" + signal):
            try:
                hook(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in after_%s of %r.", signal, middleware, exc_info=True)

    def _hooks(self, name: str) -> list[tuple[Middleware, Hook]]:
        table: tuple[list[Middleware], HookTable] | None = getattr(self, "_hook_table", None)
        # List equality compares the middleware by identity first: one C loop, no Python per element.
        if table is None or table[0] != self.middleware:
            table = (list(self.middleware), {})
            self._hook_table = table
        hooks = table[1].get(name)
        if hooks is None:
            ordered = table[0] if name.startswith("before_") else reversed(table[0])
            hooks = table[1][name] = [(m, getattr(m, name)) for m in ordered if _overrides(m, name)]
        return hooks


def _overrides(middleware: Middleware, name: str) -> bool:
    # A middleware without the hook at all (a signal another library emits) is skipped, where
    # Dramatiq's emit would log a critical AttributeError for it on every emit.
    if not hasattr(middleware, name):
        return False
    if name in getattr(middleware, "__dict__", {}):
        return True
    return getattr(type(middleware), name) is not getattr(Middleware, name, None)
