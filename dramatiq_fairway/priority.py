"""The five priority levels. Lower numbers are more urgent, as in the seed systems."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any, cast


class Priority(IntEnum):
    CRITICAL = 1
    HIGH = 2
    NORMAL = 3
    LOW = 4
    BATCH = 5

    @classmethod
    def parse(cls, value: object) -> Priority:
        """A level from a ``Priority``, its name (any case) or its number; ``ValueError`` otherwise."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        if isinstance(value, int) and not isinstance(value, bool) and value in cls._value2member_map_:
            # The member itself: ``cls(value)`` goes through Enum's metaclass, on every send.
            return cast(Priority, cls._value2member_map_[value])
        allowed = ", ".join(f"{level.name} ({level.value})" for level in cls)
        raise ValueError(f"priority_level: {value!r} is not one of {allowed}")


def level_of(options: Mapping[str, Any]) -> Priority:
    """The level a message's ``options`` ask for, NORMAL when they name none; ``ValueError`` on a bad one."""
    return Priority.parse(options.get("priority_level", Priority.NORMAL))


def broker_priority_of(level: Priority, max_priority: int) -> int:
    """The AMQP priority of ``level`` on a queue with ``x-max-priority`` ``max_priority`` (higher
    is more urgent there): CRITICAL gets the top one, and nothing goes below 1."""
    return max(1, max_priority + Priority.CRITICAL - level)


def level_name(value: object) -> str | None:
    """The name of the level a ``priority_level`` option names, ``None`` when it names none.

    Remembered per spelling (a handful: names in some case, numbers): the per-job paths that label
    a job with its level (history, tracing) would otherwise parse the same few values every time."""
    # Exact types only: True equals 1 and would find CRITICAL's entry, where parse refuses it.
    remembered = type(value) in (str, int)
    if remembered and (name := _LEVEL_NAMES.get(value)) is not None:
        return name
    try:
        name = Priority.parse(value).name
    except ValueError:
        return None
    if remembered and len(_LEVEL_NAMES) < _LEVEL_SPELLINGS:
        _LEVEL_NAMES[value] = name
    return name


_LEVEL_NAMES: dict[object, str] = {}
_LEVEL_SPELLINGS = 64


def level_of_broker_priority(priority: int | None, max_priority: int) -> Priority:
    """The level of a message published with AMQP ``priority`` (the inverse of
    :func:`broker_priority_of`, clamped to the five levels); NORMAL when it has none."""
    if priority is None:
        return Priority.NORMAL
    return Priority(min(Priority.BATCH, max(Priority.CRITICAL, max_priority + Priority.CRITICAL - priority)))
