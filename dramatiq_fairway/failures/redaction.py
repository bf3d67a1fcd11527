"""Secrets out of everything fairway writes about a message: records, retried options, log lines.

Two kinds of rule. By key name: a key is secret when its name, lower-cased with ``-`` read as
``_``, contains one of the words of ``FAIRWAY_DLQ__REDACT`` (default: password, secret, token,
api_key, authorization, cookie); its whole value becomes ``[redacted:<word>]``. Positional
arguments are first bound to the actor's signature, so ``login("ann", "hunter2")`` for
``def login(user, password)`` has its second argument redacted too. By value: the rules of
:mod:`dramatiq_fairway.failures.redaction_rules` (card numbers, JWTs, ...) and ``FAIRWAY_DLQ__REDACT_PATTERNS``
redact what they match inside any string, whatever its key (``[redacted:card]``). Dicts and lists
are walked to any depth; the same rules apply to args, kwargs, options and the raw message body.

Every value redacted by key name is also remembered, so that the same text can be scrubbed from an
error message or a traceback that happened to quote it; value rules apply to that text too.
What redaction covers and what it cannot is written down in docs/redaction.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .redaction_rules import BUILT_IN_RULES, ValueRule, placeholder, redact_text, user_rules

if TYPE_CHECKING:
    from ..settings import Settings

# Values shorter than this are not scrubbed out of free text: replacing every "1" or "no" in a
# traceback would destroy it and protect nothing.
_MIN_SCRUB_LENGTH = 4

# Options ClassifiedRetries writes about a failure (middlewares/retries.py): free text about what
# went wrong, not inputs of the job, so scrubbing them does not make a requeued job run with a
# placeholder and they are not listed among the redacted fields.
FAILURE_TEXT_OPTIONS = frozenset({"error_message", "traceback", "attempt_history"})


@dataclass
class Redacted:
    """The outcome of redacting one message: the cleaned parts and what was removed."""

    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    fields: list[str]
    # Each value redacted by key name → the word of the rule that caught it.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    rules: tuple[ValueRule, ...] = field(default=BUILT_IN_RULES, repr=False)

    def __post_init__(self) -> None:
        # Longest first: a secret that contains another is replaced whole.
        self._by_length = sorted(self.secrets, key=len, reverse=True)

    def scrub(self, text: str | None) -> str | None:
        """``text`` with every redacted value in it, and whatever a value rule finds, replaced."""
        if text is None:
            return None
        return self.scrub_text(text)

    def scrub_text(self, text: str) -> str:
        for secret in self._by_length:
            if secret in text:
                text = text.replace(secret, placeholder(self.secrets[secret]))
        return redact_text(text, self.rules)[0]


class Redactor:
    """Redacts by key name (``words``, matched case-insensitively inside key names) and by value
    (the built-in rules and ``patterns``, regexes)."""

    def __init__(self, words: Iterable[str], patterns: Iterable[str] = ()) -> None:
        self.words = tuple(_normalise(word) for word in words if word)
        self.rules = (*BUILT_IN_RULES, *user_rules(patterns))

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        return cls(settings.dlq.redact, settings.dlq.redact_patterns)

    def secret_word(self, key: str) -> str | None:
        """The word that makes ``key`` a secret's name, or None."""
        name = _normalise(key)
        return next((word for word in self.words if word in name), None)

    def scrub(self, text: str) -> str:
        """``text`` with whatever a value rule finds replaced (no message at hand to learn secrets from)."""
        return redact_text(text, self.rules)[0]

    def redact_message(
        self,
        args: list[Any] | tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        fn: Callable[..., Any] | None = None,
    ) -> Redacted:
        """Redact a message's parts; ``fn`` (the actor function, when known) names positional args."""
        names = _positional_names(fn, len(args))
        arg_paths = [f"args.{names[i]}" if i < len(names) and names[i] else f"args[{i}]" for i in range(len(args))]
        # First every secret found by key name, so that the walk below scrubs it out of any other
        # value quoting it (an error message in the options, a note in the kwargs).
        secrets: dict[str, str] = {}
        for index, value in enumerate(args):
            name = names[index] if index < len(names) else None
            word = self.secret_word(name) if name else None
            if word:
                _remember(value, word, secrets)
            else:
                self._collect(value, secrets)
        self._collect(kwargs, secrets)
        self._collect(options, secrets)
        redacted = Redacted([], {}, {}, [], secrets, self.rules)
        fields: list[str] = []
        for index, value in enumerate(args):
            name = names[index] if index < len(names) else None
            word = self.secret_word(name) if name else None
            if word:
                fields.append(arg_paths[index])
                redacted.args.append(placeholder(word))
            else:
                redacted.args.append(self._walk(value, arg_paths[index], fields, redacted))
        redacted.kwargs = self._walk_mapping(kwargs, "kwargs", fields, redacted)
        redacted.options = self._walk_mapping(options, "options", fields, redacted)
        redacted.fields = sorted(set(fields))
        return redacted

    def _collect(self, value: Any, secrets: dict[str, str]) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                word = self.secret_word(key) if isinstance(key, str) else None
                if word:
                    _remember(item, word, secrets)
                else:
                    self._collect(item, secrets)
        elif isinstance(value, list | tuple):
            for item in value:
                self._collect(item, secrets)

    def _walk(self, value: Any, path: str, fields: list[str], redacted: Redacted) -> Any:
        if isinstance(value, dict):
            return self._walk_mapping(value, path, fields, redacted)
        if isinstance(value, list | tuple):
            return [self._walk(item, f"{path}[{index}]", fields, redacted) for index, item in enumerate(value)]
        if isinstance(value, str):
            clean = redacted.scrub_text(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            # A card number sent as a JSON number is still a card number.
            text = str(value)
            clean = redact_text(text, self.rules)[0]
            if clean == text:
                return value
        else:
            return value
        if clean != value and not _is_failure_text(path):
            fields.append(path)
        return clean

    def _walk_mapping(
        self, mapping: dict[Any, Any], path: str, fields: list[str], redacted: Redacted
    ) -> dict[str, Any]:
        clean: dict[str, Any] = {}
        for key, value in mapping.items():
            child = f"{path}.{key}" if path else str(key)
            word = self.secret_word(key) if isinstance(key, str) else None
            if word:
                fields.append(child)
                clean[key] = placeholder(word)
            else:
                clean[key] = self._walk(value, child, fields, redacted)
        return clean


def _is_failure_text(path: str) -> bool:
    head, _, rest = path.partition(".")
    return head == "options" and rest.split(".")[0].split("[")[0] in FAILURE_TEXT_OPTIONS


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


def _remember(value: Any, word: str, secrets: dict[str, str]) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _remember(item, word, secrets)
    elif isinstance(value, list | tuple):
        for item in value:
            _remember(item, word, secrets)
    elif value is not None and not isinstance(value, bool):
        text = str(value)
        if len(text) >= _MIN_SCRUB_LENGTH:
            secrets.setdefault(text, word)
