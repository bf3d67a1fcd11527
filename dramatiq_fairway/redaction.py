"""Secrets out of dead-letter records: values whose key name looks secret are replaced by a placeholder.

A key is secret when its name, lower-cased with ``-`` read as ``_``, contains one of the words of
``FAIRWAY_DLQ__REDACT`` (default: password, secret, token, api_key, authorization, cookie).
Positional arguments are first bound to the actor's signature, so ``login("ann", "hunter2")``
for ``def login(user, password)`` has its second argument redacted too. Dicts and lists are
walked to any depth. The same rules apply to args, kwargs, options and the raw message body.

Every value that was redacted is also remembered, so that the same text can be scrubbed from an
error message or a traceback that happened to quote it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

PLACEHOLDER = "[REDACTED]"

# Values shorter than this are not scrubbed out of free text: replacing every "1" or "no" in a
# traceback would destroy it and protect nothing.
_MIN_SCRUB_LENGTH = 4


@dataclass
class Redacted:
    """The outcome of redacting one message: the cleaned parts and what was removed."""

    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    fields: list[str]
    secrets: set[str] = field(default_factory=set, repr=False)

    def scrub(self, text: str | None) -> str | None:
        """``text`` with every redacted value that occurs in it replaced by the placeholder."""
        if text is None:
            return None
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, PLACEHOLDER)
        return text


class Redactor:
    """Redacts values by key name; ``words`` are matched case-insensitively inside key names."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = tuple(_normalise(word) for word in words if word)

    def is_secret(self, key: str) -> bool:
        name = _normalise(key)
        return any(word in name for word in self.words)

    def redact_message(
        self,
        args: list[Any] | tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        fn: Callable[..., Any] | None = None,
    ) -> Redacted:
        """Redact a message's parts; ``fn`` (the actor function, when known) names positional args."""
        fields: list[str] = []
        secrets: set[str] = set()
        names = _positional_names(fn, len(args))
        clean_args: list[Any] = []
        for index, value in enumerate(args):
            name = names[index] if index < len(names) else None
            if name is not None and self.is_secret(name):
                fields.append(f"args.{name}")
                _remember(value, secrets)
                clean_args.append(PLACEHOLDER)
            else:
                clean_args.append(self._walk(value, f"args[{index}]", fields, secrets))
        clean_kwargs = self._walk_mapping(kwargs, "kwargs", fields, secrets)
        clean_options = self._walk_mapping(options, "options", fields, secrets)
        return Redacted(clean_args, clean_kwargs, clean_options, sorted(set(fields)), secrets)

    def _walk(self, value: Any, path: str, fields: list[str], secrets: set[str]) -> Any:
        if isinstance(value, dict):
            return self._walk_mapping(value, path, fields, secrets)
        if isinstance(value, list | tuple):
            return [self._walk(item, f"{path}[{index}]", fields, secrets) for index, item in enumerate(value)]
        return value

    def _walk_mapping(self, mapping: dict[Any, Any], path: str, fields: list[str], secrets: set[str]) -> dict[str, Any]:
        clean: dict[str, Any] = {}
        for key, value in mapping.items():
            child = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and self.is_secret(key):
                fields.append(child)
                _remember(value, secrets)
                clean[key] = PLACEHOLDER
            else:
                clean[key] = self._walk(value, child, fields, secrets)
        return clean


def _normalise(name: str) -> str:
    return name.lower().replace("-", "_")


def _positional_names(fn: Callable[..., Any] | None, count: int) -> list[str | None]:
    """The parameter name each of ``count`` positional arguments binds to; None past ``*args``."""
    if fn is None:
        return []
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    names: list[str | None] = []
    for parameter in parameters:
        if len(names) == count:
            break
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            names.append(parameter.name)
        elif parameter.kind is parameter.VAR_POSITIONAL:
            # Every further positional value lands in *name: secret if the name says so.
            names.extend([parameter.name] * (count - len(names)))
            break
        else:
            break
    return names


def _remember(value: Any, secrets: set[str]) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _remember(item, secrets)
    elif isinstance(value, list | tuple):
        for item in value:
            _remember(item, secrets)
    elif value is not None and not isinstance(value, bool):
        text = str(value)
        if len(text) >= _MIN_SCRUB_LENGTH:
            secrets.add(text)
