"""Redaction by key name (positional arguments bound to the actor's signature) and by value."""

from __future__ import annotations

from typing import Any

import pytest

from dramatiq_fairway.failures.redaction import Redactor
from dramatiq_fairway.failures.redaction_rules import placeholder
from dramatiq_fairway.settings import SECRET_WORDS


def login(user: str, password: str, *, retries: int = 0) -> None: ...


def spread(name: str, *tokens: str) -> None: ...


def test_keyword_secrets_are_redacted_case_and_dash_insensitively() -> None:
    redactor = Redactor(SECRET_WORDS)
    out = redactor.redact_message([], {"Password": "hunter2", "X-Api-Key": "k-123456", "user": "ann"}, {})
    assert out.kwargs == {"Password": "[redacted:password]", "X-Api-Key": "[redacted:api_key]", "user": "ann"}
    assert out.fields == ["kwargs.Password", "kwargs.X-Api-Key"]


def test_positional_secret_is_redacted_through_the_signature() -> None:
    out = Redactor(SECRET_WORDS).redact_message(["ann", "hunter2"], {}, {}, login)
    assert out.args == ["ann", "[redacted:password]"]
    assert out.fields == ["args.password"]


def test_var_positional_named_secret_redacts_every_extra_argument() -> None:
    out = Redactor(SECRET_WORDS).redact_message(["ann", "t1-secret", "t2-secret"], {}, {}, spread)
    assert out.args == ["ann", placeholder("token"), placeholder("token")]


def test_nested_values_in_args_kwargs_and_options_are_walked() -> None:
    options: dict[str, Any] = {"headers": {"Authorization": "Bearer abcdef"}, "tenant": "t1"}
    out = Redactor(SECRET_WORDS).redact_message(
        [{"config": [{"token": "tok-999"}]}], {"payload": {"cookie": "c=1234"}}, options
    )
    assert out.args == [{"config": [{"token": placeholder("token")}]}]
    assert out.kwargs == {"payload": {"cookie": placeholder("cookie")}}
    assert out.options == {"headers": {"Authorization": placeholder("authorization")}, "tenant": "t1"}
    assert out.fields == ["args[0].config[0].token", "kwargs.payload.cookie", "options.headers.Authorization"]


def test_configured_words_replace_the_defaults() -> None:
    redactor = Redactor(["pin"])
    out = redactor.redact_message([], {"pin": "1234", "password": "kept"}, {})
    assert out.kwargs == {"pin": placeholder("pin"), "password": "kept"}


def test_redacted_values_are_scrubbed_from_free_text() -> None:
    out = Redactor(SECRET_WORDS).redact_message(["ann", "hunter2"], {}, {}, login)
    assert out.scrub("login failed for ann with 'hunter2'") == "login failed for ann with '[redacted:password]'"
    assert out.scrub(None) is None


def test_input_is_not_mutated() -> None:
    kwargs = {"password": "hunter2"}
    Redactor(SECRET_WORDS).redact_message([], kwargs, {})
    assert kwargs == {"password": "hunter2"}


def charge(order_id: str, card: str) -> None: ...


VISA = "4242424242424242"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.c2lnbmF0dXJlLXZhbHVl"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nq1w2e3r4\n-----END RSA PRIVATE KEY-----"


def test_a_card_number_is_redacted_whatever_its_argument_is_called() -> None:
    out = Redactor(SECRET_WORDS).redact_message(["order-1", VISA], {}, {}, charge)
    assert out.args == ["order-1", "[redacted:card]"]
    assert out.fields == ["args.card"]
    assert out.scrub(f"declined {VISA} for order-1") == "declined [redacted:card] for order-1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4242 4242 4242 4242 ok", "card [redacted:card] ok"),
        ("card 3782-822463-10005 ok", "card [redacted:card] ok"),  # Amex, 15 digits in 4-6-5
        ("order 12 4242 4242 4242 4242", "order 12 [redacted:card]"),
        ("as a number 4000000000000002", "as a number [redacted:card]"),
        (f"auth {JWT} end", "auth [redacted:jwt] end"),
        ("Authorization: Bearer abc.DEF-123_xyz", "Authorization: Bearer [redacted:bearer]"),
        (f"key {PEM} done", "key [redacted:private_key] done"),
        ("cut -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg", "cut [redacted:private_key]"),
        ("id AKIAIOSFODNN7EXAMPLE used", "id [redacted:aws_key] used"),
        ("redis://app:hunter2@db:6379/0", "redis://app:[redacted:url_password]@db:6379/0"),
    ],
)
def test_value_rules_redact_what_they_recognise(text: str, expected: str) -> None:
    assert Redactor(SECRET_WORDS).scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "order 4242424242424241 failed",  # 16 digits failing Luhn
        "at 1718000000000 ms",  # an epoch-ms timestamp
        "snowflake 1800000000000000009",  # a 19-digit id starting with 1
        "row 12345678901234567890123",  # too long to be a card
        "2024-06-10 12:00:00 took 4242 ms",
        "Bearer",
        "https://example.com/path?q=1",
        # Message ids whose digit groups pass the card checks (found among random UUIDs).
        "4bc43781-4407-4564-8891-8d008df2eb0a",
        "39437522-0359-4bb2-ae4a-a28e05a6f9bf",
        "7fa8c359-9681-4354-99c1-b2b3739bb515",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert Redactor(SECRET_WORDS).scrub(text) == text


def test_a_card_sent_as_a_json_number_is_redacted() -> None:
    out = Redactor(SECRET_WORDS).redact_message([1, int(VISA)], {}, {})
    assert out.args == [1, "[redacted:card]"]
    assert out.fields == ["args[1]"]


def test_user_patterns_add_rules_named_by_their_place() -> None:
    redactor = Redactor(SECRET_WORDS, [r"ssn-\d{3}", r"pin=(?P<secret>\d+)"])
    assert redactor.scrub("ssn-123 and pin=9876") == "[redacted:pattern-1] and pin=[redacted:pattern-2]"


def test_secrets_found_by_key_are_scrubbed_from_failure_texts_in_the_options_without_listing_them() -> None:
    options = {
        "error_message": "login failed for hunter2",
        "attempt_history": [{"attempt": 1, "error_message": f"login failed for hunter2 with {VISA}"}],
        "note": "hunter2",
    }
    out = Redactor(SECRET_WORDS).redact_message(["ann", "hunter2"], {}, options, login)
    assert out.options == {
        "error_message": "login failed for [redacted:password]",
        "attempt_history": [
            {"attempt": 1, "error_message": "login failed for [redacted:password] with [redacted:card]"}
        ],
        "note": "[redacted:password]",
    }
    # Failure texts are not inputs of the job: only the note would make a requeued job differ.
    assert out.fields == ["args.password", "options.note"]
