"""Value rules: secrets recognised by what they look like, whatever the key that holds them is called.

Built in: payment card numbers (``card``: 13 to 19 digits, spaces or dashes allowed between
groups, first digit 2 to 6 as issued cards have, passing the Luhn check), JSON Web Tokens
(``jwt``), ``Bearer`` credentials (``bearer``), PEM private keys (``private_key``, to the end of
the text when its END line was cut off), AWS-style access key ids (``aws_key``) and the password
of a ``scheme://user:password@`` URL (``url_password``). ``FAIRWAY_DLQ__REDACT_PATTERNS`` adds
the user's own regexes as rules ``pattern-1``, ``pattern-2``, ...: the whole match is redacted, or
only the group named ``secret`` when the pattern has one. What each rule cannot catch is written
down in docs/redaction.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

SECRET_GROUP = "secret"

# Card numbers are at most 19 digits; a run of digits can hold one among other groups
# ("order 12 4242 4242 4242 4242"), so each run is searched group by group.
# Digit groups not glued to a letter or digit: in an id such as a UUID ("...c359-9681-4354-99c1...")
# digits that happen to pass the card checks are part of a hex string, not a card number.
_DIGIT_RUN = re.compile(r"(?<![0-9A-Za-z])\d+(?:[ -]\d+)*(?![0-9A-Za-z])")
_GROUP_SEPARATOR = re.compile(r"[ -]")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_CARD_DIGITS = range(13, 20)
# Issued cards start with 2-6 (the banking and financial industries); epoch timestamps and
# snowflake ids start with 1 today, so they are never mistaken for one.
_CARD_FIRST_DIGITS = "23456"


@dataclass(frozen=True)
class ValueRule:
    """One rule: ``name`` goes into the placeholder; ``pattern`` finds the secret in a text."""

    name: str
    pattern: re.Pattern[str]

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        """Where in ``text`` this rule finds a secret, as (start, end) pairs."""
        secret_group = SECRET_GROUP in self.pattern.groupindex
        for match in self.pattern.finditer(text):
            start, end = match.span(SECRET_GROUP) if secret_group else match.span()
            if end > start:
                yield start, end


class CardRule(ValueRule):
    """Payment card numbers: digit groups totalling 13-19 digits that pass the Luhn check."""

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        # Message ids are UUIDs; one whose digit groups pass the card checks is still an id.
        ids = [match.span() for match in _UUID.finditer(text)]
        for run in self.pattern.finditer(text):
            if not any(start < run.end() and run.start() < end for start, end in ids):
                yield from _card_spans(run.group(), run.start())


def _card_spans(run: str, offset: int) -> Iterator[tuple[int, int]]:
    groups = [(match.start(), match.end()) for match in re.finditer(r"\d+", run)]
    first = 0
    while first < len(groups):
        # The longest window of whole groups starting at ``first`` that is a card wins.
        found = None
        for last in range(first, len(groups)):
            start, end = groups[first][0], groups[last][1]
            digits = _GROUP_SEPARATOR.sub("", run[start:end])
            if len(digits) > _CARD_DIGITS[-1]:
                break
            if len(digits) in _CARD_DIGITS and digits[0] in _CARD_FIRST_DIGITS and luhn_valid(digits):
                found = (last, start, end)
        if found is None:
            first += 1
            continue
        last, start, end = found
        yield offset + start, offset + end
        first = last + 1


def luhn_valid(digits: str) -> bool:
    """Whether ``digits`` pass the Luhn check (ISO/IEC 7812-1) that every card number passes."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


BUILT_IN_RULES: tuple[ValueRule, ...] = (
    ValueRule(
        "private_key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\Z)"
        ),
    ),
    ValueRule("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")),
    ValueRule("bearer", re.compile(r"\bBearer\s+(?P<secret>[A-Za-z0-9._~+/-]{8,}=*)", re.IGNORECASE)),
    ValueRule("url_password", re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:(?P<secret>[^@\s]+)@")),
    ValueRule(
        "aws_key",
        re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}\b"),
    ),
    CardRule("card", _DIGIT_RUN),
)


def user_rules(patterns: Iterable[str]) -> tuple[ValueRule, ...]:
    """``FAIRWAY_DLQ__REDACT_PATTERNS`` as rules named by their place in the list (``pattern-1``...)."""
    return tuple(ValueRule(f"pattern-{index}", re.compile(pattern)) for index, pattern in enumerate(patterns, 1))


def redact_text(text: str, rules: Iterable[ValueRule]) -> tuple[str, list[str]]:
    """``text`` with every secret the rules find replaced by its rule's placeholder; the rules that fired."""
    found: list[tuple[int, int, str]] = []
    for rule in rules:
        found.extend((start, end, rule.name) for start, end in rule.spans(text))
    if not found:
        return text, []
    # Earliest first, the longest of those starting together: overlapping finds become one.
    found.sort(key=lambda span: (span[0], -span[1]))
    parts: list[str] = []
    fired: list[str] = []
    cursor = 0
    for start, end, name in found:
        if start < cursor:
            cursor = max(cursor, end)
            continue
        parts.extend((text[cursor:start], placeholder(name)))
        fired.append(name)
        cursor = end
    parts.append(text[cursor:])
    return "".join(parts), fired


def placeholder(rule: str) -> str:
    """What a redacted value is replaced by: it names the rule that fired (``[redacted:card]``)."""
    return f"[redacted:{rule}]"
