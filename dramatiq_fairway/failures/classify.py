"""ErrorClassifier: what kind of failure an exception is, so retries can treat each kind right.

Results are ``transient`` (retry with backoff), ``permanent`` (dead-letter at once),
``rate_limited`` (wait for the dependency's hint), ``interrupted`` (Dramatiq's interrupts and
ours: ``Shutdown``, ``TimeLimitExceeded``, ``SoftTimeLimitExceeded``, ``Cancelled``) and
``unknown`` (retried or failed as ``Settings.retries.unknown`` says).

The first rule that matches decides, in this order:

1. interrupts (any Dramatiq ``Interrupt``) → ``interrupted``;
2. marker exceptions: ``PermanentError``, ``RateLimited(retry_after)``, ``TransientError``,
   Dramatiq's ``Retry``;
3. ``dont_retry_for`` then ``retry_for`` (the message's dotted names, else the actor's classes);
4. rules added with :meth:`ErrorClassifier.register`, in the order they were added;
5. built-in type rules (:data:`BUILTIN_RULES`), most specific first;
6. an HTTP status found on the exception (``.status_code``, ``.status``,
   ``.response.status_code``): 429 → ``rate_limited`` (with its ``Retry-After``),
   408/425/500/502/503/504 and other 5xx → ``transient`` (503 with ``Retry-After`` →
   ``rate_limited``), other 4xx and 501/505 → ``permanent``;
7. message patterns (case-insensitive regexes over ``"<error type>: <message>"``): the transient
   then permanent patterns of ``Settings.retries``, then the built-in ones;
8. an error raised ``from`` another (``__cause__``) is classified as its cause;
9. anything else → ``unknown``.

Exception types are named by dotted path and looked up in ``sys.modules`` only, never imported:
an instance of a class can exist only once the module defining it was imported, so a rule for an
optional library (``httpx``, ``requests``) costs nothing when it is absent, and a dotted name
carried by a message can never make a worker import anything.
"""

from __future__ import annotations

import builtins
import errno
import re
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dramatiq.errors import Retry
from dramatiq.middleware import Interrupt

from ..errors import PermanentError, RateLimited, TransientError
from ..settings import RetrySettings, Settings
from .backoff import parse_retry_after


class Classification(StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    RATE_LIMITED = "rate_limited"
    UNKNOWN = "unknown"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class ClassificationResult:
    """The verdict on one exception: its class, the rule that decided, and any wait the error asked for."""

    classification: Classification
    rule: str
    retry_after: float | None = None


ExceptionMatch = type[BaseException] | str | tuple[type[BaseException] | str, ...] | Callable[[BaseException], bool]


@dataclass(frozen=True)
class Rule:
    name: str
    classification: Classification
    matches: Callable[[BaseException], bool]


def resolve_exception_type(name: str) -> type[BaseException] | None:
    """The exception class a dotted name designates, if its module is imported; bare names are builtins."""
    parts = name.strip().split(".")
    if len(parts) == 1:
        found: Any = getattr(builtins, parts[0], None)
        return found if _is_exception_type(found) else None
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        found = module
        for attribute in parts[split:]:
            found = getattr(found, attribute, None)
        if _is_exception_type(found):
            return found  # type: ignore[no-any-return]
    return None


def qualified_name(exception_type: type[BaseException]) -> str:
    """``module.QualName`` of an exception type, just ``QualName`` for builtins."""
    if exception_type.__module__ == "builtins":
        return exception_type.__qualname__
    return f"{exception_type.__module__}.{exception_type.__qualname__}"


def matcher(match: ExceptionMatch) -> Callable[[BaseException], bool]:
    """A predicate from a class, a dotted name, a tuple of those, or a predicate itself."""
    if isinstance(match, tuple):
        matchers = [matcher(item) for item in match]
        return lambda exc: any(m(exc) for m in matchers)
    if isinstance(match, str):
        return lambda exc: _isinstance_by_name(exc, match)
    if isinstance(match, type):
        exception_type = match
        return lambda exc: isinstance(exc, exception_type)
    return match


def _isinstance_by_name(exc: BaseException, name: str) -> bool:
    exception_type = resolve_exception_type(name)
    return exception_type is not None and isinstance(exc, exception_type)


def _is_exception_type(candidate: object) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseException)


def _type_rule(classification: Classification, *names: str) -> Rule:
    return Rule(" | ".join(names), classification, matcher(names))


TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ENETRESET,
        errno.EPIPE,
        errno.EAGAIN,
    }
)


def _transient_errno(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def _temporary_dns_failure(exc: BaseException) -> bool:
    return isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN


_T = Classification.TRANSIENT
_P = Classification.PERMANENT

# Ordered: a subclass that means something else than its base comes before the base (redis'
# AuthenticationError is a redis ConnectionError, json's JSONDecodeError a ValueError).
BUILTIN_RULES: tuple[Rule, ...] = (
    # credentials and permissions do not fix themselves between attempts
    _type_rule(_P, "redis.exceptions.AuthenticationError"),
    _type_rule(_P, "redis.exceptions.AuthorizationError", "redis.exceptions.NoPermissionError"),
    _type_rule(
        _P,
        "pika.exceptions.AuthenticationError",
        "pika.exceptions.ProbableAuthenticationError",
        "pika.exceptions.ProbableAccessDeniedError",
    ),
    # transient: the network, the servers, the dependency's load
    _type_rule(_T, "ConnectionError"),
    _type_rule(_T, "TimeoutError"),
    _type_rule(_T, "InterruptedError"),
    Rule("OSError errno " + "/".join(sorted(errno.errorcode[n] for n in TRANSIENT_ERRNOS)), _T, _transient_errno),
    Rule("socket.gaierror EAI_AGAIN", _T, _temporary_dns_failure),
    _type_rule(_T, "http.client.IncompleteRead"),
    _type_rule(_T, "dramatiq.errors.BrokerConnectionError"),
    _type_rule(Classification.RATE_LIMITED, "dramatiq.errors.RateLimitExceeded"),
    _type_rule(_T, "dramatiq_fairway.errors.QueueFull"),
    _type_rule(_T, "dramatiq_fairway.errors.BreakerOpen"),
    _type_rule(_T, "redis.exceptions.ConnectionError"),  # BusyLoadingError, MaxConnectionsError too
    _type_rule(_T, "redis.exceptions.TimeoutError"),
    _type_rule(_T, "redis.exceptions.TryAgainError"),
    _type_rule(_T, "redis.exceptions.ClusterDownError"),
    _type_rule(_T, "redis.exceptions.ReadOnlyError"),
    _type_rule(_T, "redis.exceptions.OutOfMemoryError"),
    _type_rule(_T, "pika.exceptions.AMQPConnectionError"),
    _type_rule(_T, "httpx.TimeoutException"),
    _type_rule(_T, "httpx.NetworkError"),
    _type_rule(_T, "httpx.RemoteProtocolError"),
    _type_rule(_T, "httpx.ProxyError"),
    _type_rule(_T, "requests.exceptions.ConnectionError"),
    _type_rule(_T, "requests.exceptions.Timeout"),
    _type_rule(_T, "requests.exceptions.ChunkedEncodingError"),
    # permanent: bad input, bad code, bad configuration
    _type_rule(_P, "json.JSONDecodeError"),
    _type_rule(_P, "UnicodeError"),
    _type_rule(_P, "pydantic.ValidationError"),
    _type_rule(_P, "httpx.InvalidURL", "httpx.UnsupportedProtocol", "httpx.LocalProtocolError"),
    _type_rule(_P, "httpx.TooManyRedirects", "httpx.DecodingError"),
    _type_rule(
        _P,
        "requests.exceptions.InvalidURL",
        "requests.exceptions.MissingSchema",
        "requests.exceptions.InvalidSchema",
        "requests.exceptions.TooManyRedirects",
    ),
    _type_rule(_P, "redis.exceptions.DataError"),
    _type_rule(_P, "dramatiq_fairway.errors.ConfigError", "dramatiq_fairway.errors.MessageTooLarge"),
    _type_rule(_P, "ValueError"),
    _type_rule(_P, "TypeError"),
    _type_rule(_P, "KeyError"),
    _type_rule(_P, "IndexError"),
    _type_rule(_P, "LookupError"),
    _type_rule(_P, "AttributeError"),
    _type_rule(_P, "NotImplementedError"),
    _type_rule(_P, "RecursionError"),
    _type_rule(_P, "PermissionError"),
    _type_rule(_P, "FileNotFoundError"),
    _type_rule(_P, "IsADirectoryError", "NotADirectoryError"),
    _type_rule(_P, "AssertionError"),
    _type_rule(_P, "ZeroDivisionError"),
    _type_rule(_P, "ImportError"),
    _type_rule(_P, "NameError"),
)

DEFAULT_TRANSIENT_PATTERNS: tuple[str, ...] = (
    r"temporar(y|ily) (unavailable|failure)",
    r"try again",
    r"timed? ?out",
    r"connection (reset|refused|aborted|closed|lost)",
    r"service unavailable",
    r"too many (requests|connections)",
    r"rate.?limit",
    r"deadlock",
    r"database is locked",
    r"server (has gone away|closed the connection)",
    r"broken pipe",
)
DEFAULT_PERMANENT_PATTERNS: tuple[str, ...] = (
    r"permission denied",
    r"access denied",
    r"unauthori[sz]ed",
    r"forbidden",
    r"invalid",
    r"malformed",
    r"unsupported|not supported",
    r"does not exist",
    r"no such",
)

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
PERMANENT_5XX_STATUSES = frozenset({501, 505})
# Patterns see at most this much of a message: a regex over a megabyte-long message would stall
# the worker thread that is handling the failure.
PATTERN_INPUT_CHARS = 2000
MAX_CAUSE_DEPTH = 5


class ErrorClassifier:
    """Maps an exception to a :class:`Classification`; see the module docstring for the rule order."""

    def __init__(self, settings: Settings | RetrySettings | None = None) -> None:
        retry_settings = settings.retries if isinstance(settings, Settings) else settings or RetrySettings()
        self.unknown_policy = retry_settings.unknown
        self.rules: list[Rule] = []
        self.patterns: list[tuple[re.Pattern[str], Classification, str]] = [
            *_compile(retry_settings.transient_patterns, _T, "settings"),
            *_compile(retry_settings.permanent_patterns, _P, "settings"),
            *_compile(DEFAULT_TRANSIENT_PATTERNS, _T, "builtin"),
            *_compile(DEFAULT_PERMANENT_PATTERNS, _P, "builtin"),
        ]

    def register(self, match: ExceptionMatch, classification: Classification | str, *, name: str | None = None) -> Rule:
        """Add a rule, consulted after ``retry_for``/``dont_retry_for`` and before the built-in ones.

        ``match`` is an exception class, a dotted name, a tuple of those, or a predicate taking the
        exception.
        """
        rule = Rule(name or _describe(match), Classification(classification), matcher(match))
        self.rules.append(rule)
        return rule

    def classify(
        self,
        exc: BaseException,
        *,
        retry_for: Iterable[type[BaseException] | str] = (),
        dont_retry_for: Iterable[type[BaseException] | str] = (),
    ) -> ClassificationResult:
        result = self._classify(exc, tuple(retry_for), tuple(dont_retry_for))
        cause, depth = exc.__cause__, 0
        while result.classification is Classification.UNKNOWN and cause is not None and depth < MAX_CAUSE_DEPTH:
            cause_result = self._classify(cause, tuple(retry_for), tuple(dont_retry_for))
            if cause_result.classification is not Classification.UNKNOWN:
                return ClassificationResult(
                    cause_result.classification, f"cause: {cause_result.rule}", cause_result.retry_after
                )
            cause, depth = cause.__cause__, depth + 1
        return result

    def should_retry(self, result: ClassificationResult) -> bool:
        """Whether this kind of failure is worth another attempt (interrupts are the caller's call)."""
        if result.classification is Classification.UNKNOWN:
            return self.unknown_policy == "retry"
        return result.classification is not Classification.PERMANENT

    def _classify(
        self,
        exc: BaseException,
        retry_for: tuple[type[BaseException] | str, ...],
        dont_retry_for: tuple[type[BaseException] | str, ...],
    ) -> ClassificationResult:
        marker = _classify_marker(exc)
        if marker is not None:
            return marker
        if dont_retry_for and matcher(dont_retry_for)(exc):
            return ClassificationResult(Classification.PERMANENT, "dont_retry_for")
        if retry_for and matcher(retry_for)(exc):
            return ClassificationResult(Classification.TRANSIENT, "retry_for")
        for rule in (*self.rules, *BUILTIN_RULES):
            if rule.matches(exc):
                return ClassificationResult(rule.classification, rule.name)
        by_status = _classify_http_status(exc)
        if by_status is not None:
            return by_status
        text = f"{qualified_name(type(exc))}: {_safe_str(exc)}"[:PATTERN_INPUT_CHARS]
        for pattern, classification, origin in self.patterns:
            if pattern.search(text):
                return ClassificationResult(classification, f"{origin} pattern {pattern.pattern!r}")
        return ClassificationResult(Classification.UNKNOWN, "no rule matched")


def _classify_marker(exc: BaseException) -> ClassificationResult | None:
    if isinstance(exc, Interrupt):
        return ClassificationResult(Classification.INTERRUPTED, qualified_name(type(exc)))
    if isinstance(exc, PermanentError):
        return ClassificationResult(Classification.PERMANENT, "PermanentError")
    if isinstance(exc, RateLimited):
        return ClassificationResult(Classification.RATE_LIMITED, "RateLimited", exc.retry_after)
    if isinstance(exc, TransientError):
        return ClassificationResult(Classification.TRANSIENT, "TransientError")
    if isinstance(exc, Retry):
        return ClassificationResult(Classification.TRANSIENT, "dramatiq.Retry")
    return None


def _classify_http_status(exc: BaseException) -> ClassificationResult | None:
    status = http_status(exc)
    if status is None:
        return None
    rule = f"HTTP {status}"
    retry_after = parse_retry_after(_retry_after_header(exc)) if status in (429, 503) else None
    if status == 429 or (status == 503 and retry_after is not None):
        return ClassificationResult(Classification.RATE_LIMITED, rule, retry_after)
    if status in TRANSIENT_STATUSES or (500 <= status < 600 and status not in PERMANENT_5XX_STATUSES):
        return ClassificationResult(Classification.TRANSIENT, rule)
    if 400 <= status < 600:
        return ClassificationResult(Classification.PERMANENT, rule)
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (``.status_code``, ``.status``, ``.response.status_code``)."""
    response = _attribute(exc, "response")
    for candidate in (
        _attribute(exc, "status_code"),
        _attribute(exc, "status"),
        _attribute(response, "status_code"),
        _attribute(response, "status"),
    ):
        if isinstance(candidate, int) and not isinstance(candidate, bool) and 100 <= candidate < 600:
            return int(candidate)
    return None


def _retry_after_header(exc: BaseException) -> str | None:
    for owner in (_attribute(exc, "response"), exc):
        headers = _attribute(owner, "headers")
        if isinstance(headers, Mapping) or hasattr(headers, "get"):
            for key in ("Retry-After", "retry-after"):
                try:
                    value = headers.get(key)
                except Exception:
                    value = None
                if value is not None:
                    return str(value)
    return None


def _attribute(owner: object, name: str) -> Any:
    """``owner.name``, or None: exception attributes are often properties that raise when unset."""
    if owner is None:
        return None
    try:
        return getattr(owner, name, None)
    except Exception:
        return None


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return ""


def _compile(
    patterns: Iterable[str], classification: Classification, origin: str
) -> list[tuple[re.Pattern[str], Classification, str]]:
    return [(re.compile(pattern, re.IGNORECASE), classification, f"{origin} {classification}") for pattern in patterns]


def _describe(match: ExceptionMatch) -> str:
    if isinstance(match, tuple):
        return " | ".join(_describe(item) for item in match)
    if isinstance(match, str):
        return match
    if isinstance(match, type):
        return qualified_name(match)
    return getattr(match, "__qualname__", repr(match))
