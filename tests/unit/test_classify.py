"""ErrorClassifier: every built-in rule, every HTTP status class, the rule order, settings patterns."""

from __future__ import annotations

import errno
import http.client
import json
import socket
import sys
import types
from collections.abc import Callable

import dramatiq.errors
import httpx
import pika.exceptions
import pydantic
import pytest
import redis.exceptions
from dramatiq.middleware import Shutdown
from dramatiq.middleware.time_limit import TimeLimitExceeded
from freezegun import freeze_time

from dramatiq_fairway.errors import (
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
from dramatiq_fairway.failures.classify import (
    BUILTIN_RULES,
    TRANSIENT_ERRNOS,
    Classification,
    ErrorClassifier,
    resolve_exception_type,
)
from dramatiq_fairway.settings import RetrySettings, Settings, load_settings

T = Classification.TRANSIENT
P = Classification.PERMANENT
R = Classification.RATE_LIMITED
ERRNO_RULE = next(rule.name for rule in BUILTIN_RULES if rule.name.startswith("OSError errno"))


def _validation_error() -> pydantic.ValidationError:
    class Model(pydantic.BaseModel):
        n: int

    try:
        Model(n="x")  # type: ignore[arg-type]
    except pydantic.ValidationError as error:
        return error
    raise AssertionError("unreachable")


# (exception, classification, rule that must decide)
BUILTIN_CASES: list[tuple[BaseException, Classification, str]] = [
    # transient
    (ConnectionError("peer went away"), T, "ConnectionError"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), T, "ConnectionError"),
    (BrokenPipeError(errno.EPIPE, "broken"), T, "ConnectionError"),
    (TimeoutError("slow"), T, "TimeoutError"),
    (InterruptedError(errno.EINTR, "signal"), T, "InterruptedError"),
    (OSError(errno.EHOSTUNREACH, "no route to host"), T, ERRNO_RULE),
    (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), T, "socket.gaierror EAI_AGAIN"),
    (http.client.IncompleteRead(b"part"), T, "http.client.IncompleteRead"),
    (dramatiq.errors.ConnectionClosed("gone"), T, "dramatiq.errors.BrokerConnectionError"),
    (dramatiq.errors.RateLimitExceeded("busy"), R, "dramatiq.errors.RateLimitExceeded"),
    (QueueFull("tenant t at capacity"), T, "dramatiq_fairway.errors.QueueFull"),
    (BreakerOpen("api", 12.0), T, "dramatiq_fairway.errors.BreakerOpen"),
    (redis.exceptions.ConnectionError("down"), T, "redis.exceptions.ConnectionError"),
    (redis.exceptions.BusyLoadingError("loading"), T, "redis.exceptions.ConnectionError"),
    (redis.exceptions.TimeoutError("slow"), T, "redis.exceptions.TimeoutError"),
    (redis.exceptions.TryAgainError("resharding"), T, "redis.exceptions.TryAgainError"),
    (redis.exceptions.ClusterDownError("down"), T, "redis.exceptions.ClusterDownError"),
    (redis.exceptions.ReadOnlyError("replica"), T, "redis.exceptions.ReadOnlyError"),
    (redis.exceptions.OutOfMemoryError("OOM"), T, "redis.exceptions.OutOfMemoryError"),
    (pika.exceptions.AMQPConnectionError("down"), T, "pika.exceptions.AMQPConnectionError"),
    (pika.exceptions.StreamLostError("lost"), T, "pika.exceptions.AMQPConnectionError"),
    (httpx.ConnectTimeout("slow"), T, "httpx.TimeoutException"),
    (httpx.ReadTimeout("slow"), T, "httpx.TimeoutException"),
    (httpx.ConnectError("refused"), T, "httpx.NetworkError"),
    (httpx.RemoteProtocolError("peer closed"), T, "httpx.RemoteProtocolError"),
    (httpx.ProxyError("proxy down"), T, "httpx.ProxyError"),
    # permanent
    (redis.exceptions.AuthenticationError("bad password"), P, "redis.exceptions.AuthenticationError"),
    (
        redis.exceptions.NoPermissionError("no perm"),
        P,
        "redis.exceptions.AuthorizationError | redis.exceptions.NoPermissionError",
    ),
    (
        pika.exceptions.ProbableAuthenticationError("bad password"),
        P,
        "pika.exceptions.AuthenticationError | pika.exceptions.ProbableAuthenticationError"
        " | pika.exceptions.ProbableAccessDeniedError",
    ),
    (json.JSONDecodeError("Expecting value", "{", 1), P, "json.JSONDecodeError"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), P, "UnicodeError"),
    (_validation_error(), P, "pydantic.ValidationError"),
    (httpx.UnsupportedProtocol("ftp"), P, "httpx.InvalidURL | httpx.UnsupportedProtocol | httpx.LocalProtocolError"),
    (httpx.TooManyRedirects("loop"), P, "httpx.TooManyRedirects | httpx.DecodingError"),
    (redis.exceptions.DataError("bad arg"), P, "redis.exceptions.DataError"),
    (
        ConfigError("FAIRWAY_X: bad"),
        P,
        "dramatiq_fairway.errors.ConfigError | dramatiq_fairway.errors.MessageTooLarge",
    ),
    (MessageTooLarge("2 MB"), P, "dramatiq_fairway.errors.ConfigError | dramatiq_fairway.errors.MessageTooLarge"),
    (ValueError("bad"), P, "ValueError"),
    (TypeError("bad"), P, "TypeError"),
    (KeyError("k"), P, "KeyError"),
    (IndexError("i"), P, "IndexError"),
    (LookupError("codec"), P, "LookupError"),
    (AttributeError("a"), P, "AttributeError"),
    (NotImplementedError(), P, "NotImplementedError"),
    (RecursionError("deep"), P, "RecursionError"),
    (PermissionError(errno.EACCES, "denied"), P, "PermissionError"),
    (FileNotFoundError(errno.ENOENT, "missing"), P, "FileNotFoundError"),
    (IsADirectoryError(errno.EISDIR, "dir"), P, "IsADirectoryError | NotADirectoryError"),
    (AssertionError("no"), P, "AssertionError"),
    (ZeroDivisionError("division by zero"), P, "ZeroDivisionError"),
    (ModuleNotFoundError("nope"), P, "ImportError"),
    (NameError("x"), P, "NameError"),
]


@pytest.fixture
def classifier() -> ErrorClassifier:
    return ErrorClassifier(RetrySettings())


@pytest.mark.parametrize(("exc", "expected", "rule"), BUILTIN_CASES, ids=lambda v: type(v).__name__)
def test_builtin_rule(classifier: ErrorClassifier, exc: BaseException, expected: Classification, rule: str) -> None:
    result = classifier.classify(exc)
    assert (result.classification, result.rule) == (expected, rule)


@pytest.fixture
def fake_requests(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """requests is not installed here; its rules are name-based, so a module of that name exercises them."""
    module = types.ModuleType("requests.exceptions")
    base = type("RequestException", (OSError,), {})
    for name, bases in {
        "ConnectionError": (base,),
        "Timeout": (base,),
        "ChunkedEncodingError": (base,),
        "InvalidURL": (base, ValueError),
        "MissingSchema": (base, ValueError),
        "InvalidSchema": (base, ValueError),
        "TooManyRedirects": (base,),
    }.items():
        setattr(module, name, type(name, bases, {}))
    monkeypatch.setitem(sys.modules, "requests.exceptions", module)
    return module


@pytest.mark.parametrize(
    ("name", "expected", "rule"),
    [
        ("ConnectionError", T, "requests.exceptions.ConnectionError"),
        ("Timeout", T, "requests.exceptions.Timeout"),
        ("ChunkedEncodingError", T, "requests.exceptions.ChunkedEncodingError"),
        ("MissingSchema", P, "requests.exceptions.InvalidURL | requests.exceptions.MissingSchema"),
    ],
)
def test_requests_rules_when_requests_is_imported(
    classifier: ErrorClassifier, fake_requests: types.ModuleType, name: str, expected: Classification, rule: str
) -> None:
    result = classifier.classify(getattr(fake_requests, name)("x"))
    assert result.classification == expected
    assert result.rule.startswith(rule)


def test_every_builtin_rule_is_covered_by_a_case() -> None:
    covered = {rule for _, _, rule in BUILTIN_CASES} | {
        rule.name for rule in BUILTIN_RULES if rule.name.startswith("requests.")
    }
    assert {rule.name for rule in BUILTIN_RULES} == covered
    assert sum(rule.classification is T for rule in BUILTIN_RULES) >= 13
    assert sum(rule.classification is P for rule in BUILTIN_RULES) >= 13


@pytest.mark.parametrize("code", sorted(TRANSIENT_ERRNOS), ids=lambda n: errno.errorcode[n])
def test_transient_errnos(classifier: ErrorClassifier, code: int) -> None:
    assert classifier.classify(OSError(code, "x")).classification == T


def test_other_errnos_and_dns_failures_are_not_transient(classifier: ErrorClassifier) -> None:
    assert classifier.classify(OSError(errno.ENOSPC, "disk full")).classification == Classification.UNKNOWN
    missing_host = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert classifier.classify(missing_host).classification == Classification.UNKNOWN


@pytest.mark.parametrize(
    ("exc", "expected", "rule"),
    [
        (PermanentError("bad record"), P, "PermanentError"),
        (TransientError("flaky"), T, "TransientError"),
        (dramatiq.errors.Retry("again"), T, "dramatiq.Retry"),
        (Shutdown(), Classification.INTERRUPTED, "dramatiq.middleware.shutdown.Shutdown"),
        (TimeLimitExceeded(), Classification.INTERRUPTED, "dramatiq.middleware.time_limit.TimeLimitExceeded"),
        (SoftTimeLimitExceeded(), Classification.INTERRUPTED, "dramatiq_fairway.errors.SoftTimeLimitExceeded"),
        (Cancelled(), Classification.INTERRUPTED, "dramatiq_fairway.errors.Cancelled"),
    ],
)
def test_markers_and_interrupts(
    classifier: ErrorClassifier, exc: BaseException, expected: Classification, rule: str
) -> None:
    result = classifier.classify(exc)
    assert (result.classification, result.rule) == (expected, rule)


def test_rate_limited_carries_its_hint(classifier: ErrorClassifier) -> None:
    result = classifier.classify(RateLimited(retry_after=2))
    assert (result.classification, result.retry_after) == (R, 2.0)


def test_markers_beat_type_rules(classifier: ErrorClassifier) -> None:
    class BadInput(PermanentError, ConnectionError):
        pass

    class Flaky(TransientError, ValueError):
        pass

    assert classifier.classify(BadInput()).classification == P
    assert classifier.classify(Flaky()).classification == T


def test_retry_for_and_dont_retry_for_override_builtins(classifier: ErrorClassifier) -> None:
    assert classifier.classify(KeyError("k"), retry_for=(KeyError,)).rule == "retry_for"
    assert classifier.classify(KeyError("k"), retry_for=(KeyError,)).classification == T
    assert classifier.classify(TimeoutError(), dont_retry_for=(TimeoutError,)).classification == P
    # both match: not retrying is the safer reading
    assert classifier.classify(KeyError("k"), retry_for=(LookupError,), dont_retry_for=(KeyError,)).classification == P
    # markers come first
    assert classifier.classify(PermanentError(), retry_for=(PermanentError,)).classification == P


def test_retry_for_accepts_dotted_names_without_importing(classifier: ErrorClassifier) -> None:
    assert classifier.classify(KeyError("k"), retry_for=["KeyError"]).classification == T
    assert classifier.classify(json.JSONDecodeError("x", "", 0), retry_for=["json.JSONDecodeError"]).classification == T
    # an alias re-exported by a package resolves too
    assert classifier.classify(ValueError("x"), retry_for=["builtins.ValueError"]).classification == T
    error = redis.exceptions.AuthenticationError("x")
    assert classifier.classify(error, retry_for=["redis.AuthenticationError"]).classification == T
    # a module nobody imported is never imported for a name a message carries
    assert resolve_exception_type("fairway_never_imported_module.Boom") is None
    assert "fairway_never_imported_module" not in sys.modules
    assert classifier.classify(KeyError(), retry_for=["fairway_never_imported_module.Boom"]).classification == P
    assert resolve_exception_type("json.dumps") is None


def test_registered_rules_come_before_builtins_in_registration_order(classifier: ErrorClassifier) -> None:
    class RemoteQuotaError(Exception):
        pass

    classifier.register(ValueError, "transient")
    classifier.register(lambda exc: "quota" in str(exc), Classification.RATE_LIMITED, name="quota text")
    classifier.register("json.JSONDecodeError", P)
    classifier.register((RemoteQuotaError, "KeyError"), P)
    assert classifier.classify(ValueError("x")).rule == "ValueError"
    assert classifier.classify(ValueError("x")).classification == T
    assert classifier.classify(RuntimeError("quota exceeded")).rule == "quota text"
    assert classifier.classify(RuntimeError("quota exceeded")).classification == R
    # ValueError's rule was registered first: it wins over the later JSONDecodeError one
    assert classifier.classify(json.JSONDecodeError("x", "", 0)).classification == T
    assert classifier.classify(RemoteQuotaError()).classification == P


class StatusError(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.headers = headers or {}


TRANSIENT_STATUSES = [408, 425, 500, 502, 503, 504]


@pytest.mark.parametrize("status", TRANSIENT_STATUSES)
def test_transient_http_statuses(classifier: ErrorClassifier, status: int) -> None:
    assert (classifier.classify(StatusError(status)).classification, classifier.classify(StatusError(status)).rule) == (
        T,
        f"HTTP {status}",
    )


@pytest.mark.parametrize("status", [507, 520, 599])
def test_other_5xx_are_transient(classifier: ErrorClassifier, status: int) -> None:
    assert classifier.classify(StatusError(status)).classification == T


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 410, 413, 422, 451, 501, 505])
def test_other_4xx_and_unimplemented_are_permanent(classifier: ErrorClassifier, status: int) -> None:
    assert classifier.classify(StatusError(status)).classification == P


@pytest.mark.parametrize("status", [100, 200, 204, 301, 304])
def test_non_error_statuses_decide_nothing(classifier: ErrorClassifier, status: int) -> None:
    assert classifier.classify(StatusError(status)).classification == Classification.UNKNOWN


def test_429_is_rate_limited_with_retry_after_seconds(classifier: ErrorClassifier) -> None:
    result = classifier.classify(StatusError(429, {"Retry-After": "7"}))
    assert (result.classification, result.retry_after) == (R, 7.0)
    assert classifier.classify(StatusError(429)).retry_after is None
    assert classifier.classify(StatusError(429)).classification == R


@freeze_time("2026-11-25 10:00:00", tz_offset=0)
def test_429_retry_after_http_date(classifier: ErrorClassifier) -> None:
    result = classifier.classify(StatusError(429, {"retry-after": "Wed, 25 Nov 2026 10:01:30 GMT"}))
    assert (result.classification, result.retry_after) == (R, 90.0)


def test_503_with_retry_after_is_rate_limited(classifier: ErrorClassifier) -> None:
    result = classifier.classify(StatusError(503, {"Retry-After": "3"}))
    assert (result.classification, result.retry_after) == (R, 3.0)


def _httpx_status_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    response = httpx.Response(status, headers=headers, request=httpx.Request("GET", "http://api.invalid/x"))
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as error:
        return error
    raise AssertionError("unreachable")


def test_status_found_on_response_and_status_attributes(classifier: ErrorClassifier) -> None:
    result = classifier.classify(_httpx_status_error(429, {"Retry-After": "4"}))
    assert (result.classification, result.rule, result.retry_after) == (R, "HTTP 429", 4.0)
    assert classifier.classify(_httpx_status_error(404)).classification == P
    assert classifier.classify(_httpx_status_error(502)).classification == T

    class AiohttpStyle(Exception):
        status = 503

    class ResponseStatus(Exception):
        response = types.SimpleNamespace(status=404)

    assert classifier.classify(AiohttpStyle()).classification == T
    assert classifier.classify(ResponseStatus()).classification == P


def test_odd_status_attributes_are_ignored(classifier: ErrorClassifier) -> None:
    class Odd(Exception):
        status = True

        @property
        def response(self) -> object:
            raise RuntimeError("no response attached")

    class OutOfRange(Exception):
        status_code = 999

    assert classifier.classify(Odd("x")).classification == Classification.UNKNOWN
    assert classifier.classify(OutOfRange("x")).classification == Classification.UNKNOWN


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Service Unavailable, please come back", T),
        ("the upstream TIMED OUT", T),
        ("deadlock detected", T),
        ("database is locked", T),
        ("invalid token for this account", P),
        ("record does not exist", P),
        ("Permission denied on bucket", P),
    ],
)
def test_default_message_patterns(classifier: ErrorClassifier, message: str, expected: Classification) -> None:
    result = classifier.classify(RuntimeError(message))
    assert result.classification == expected
    assert result.rule.startswith("builtin")


def test_settings_patterns_come_before_the_defaults_and_see_the_type_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_RETRIES__TRANSIENT_PATTERNS", '["quota .* exhausted", "DriverGlitch: "]')
    monkeypatch.setenv("FAIRWAY_RETRIES__PERMANENT_PATTERNS", '["unavailable forever"]')
    classifier = ErrorClassifier(load_settings())

    class DriverGlitch(Exception):
        pass

    assert classifier.classify(RuntimeError("Quota for today EXHAUSTED")).classification == T
    assert classifier.classify(DriverGlitch("who knows")).classification == T
    result = classifier.classify(RuntimeError("service unavailable forever"))
    assert (result.classification, result.rule.startswith("settings")) == (P, True)


def test_unknown_error_raised_from_a_known_one_takes_its_cause(classifier: ErrorClassifier) -> None:
    class WrapperError(Exception):
        pass

    def fail(cause: BaseException) -> WrapperError:
        try:
            raise WrapperError("wrapped") from cause
        except WrapperError as error:
            return error

    result = classifier.classify(fail(ConnectionResetError(errno.ECONNRESET, "reset")))
    assert (result.classification, result.rule) == (T, "cause: ConnectionError")
    assert classifier.classify(fail(RateLimited(5))).retry_after == 5.0
    assert classifier.classify(fail(RuntimeError("?"))).classification == Classification.UNKNOWN


@pytest.mark.parametrize(("policy", "retried"), [("retry", True), ("fail", False)])
def test_unknown_follows_the_setting(policy: str, retried: bool) -> None:
    classifier = ErrorClassifier(Settings(retries=RetrySettings(unknown=policy)))  # type: ignore[arg-type]
    result = classifier.classify(RuntimeError("something odd"))
    assert result.classification == Classification.UNKNOWN
    assert classifier.should_retry(result) is retried


def test_should_retry_by_classification(classifier: ErrorClassifier) -> None:
    verdicts: dict[Classification, Callable[[], BaseException]] = {
        T: TimeoutError,
        R: lambda: RateLimited(1),
        P: ValueError,
    }
    assert {c: classifier.should_retry(classifier.classify(make())) for c, make in verdicts.items()} == {
        T: True,
        R: True,
        P: False,
    }
