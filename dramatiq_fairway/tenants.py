"""The tenant a message belongs to, as every part of the stack reads it.

The fairness middleware refuses an empty tenant when it sets one (docs/fairness.md), but a message
from a producer without it may carry none, ``None`` or ``""``: all three are the default tenant, so
that the broker's FIFO, the limits, the breaker key, the dead letter, the metrics and the log line
of one message all name the same tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_TENANT = "default"


def tenant_of(options: Mapping[str, Any]) -> str:
    """The tenant named by a message's ``options``; :data:`DEFAULT_TENANT` when it is missing or empty."""
    return str(options.get("tenant") or DEFAULT_TENANT)
