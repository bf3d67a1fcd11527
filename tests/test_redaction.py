"""Redaction by key name, with positional arguments bound to the actor's signature."""

from __future__ import annotations

from typing import Any

from dramatiq_fairway.redaction import PLACEHOLDER, Redactor
from dramatiq_fairway.settings import SECRET_WORDS


def login(user: str, password: str, *, retries: int = 0) -> None: ...


def spread(name: str, *tokens: str) -> None: ...


def test_keyword_secrets_are_redacted_case_and_dash_insensitively() -> None:
    redactor = Redactor(SECRET_WORDS)
    out = redactor.redact_message([], {"Password": "hunter2", "X-Api-Key": "k-123456", "user": "ann"}, {})
    assert out.kwargs == {"Password": PLACEHOLDER, "X-Api-Key": PLACEHOLDER, "user": "ann"}
    assert out.fields == ["kwargs.Password", "kwargs.X-Api-Key"]


def test_positional_secret_is_redacted_through_the_signature() -> None:
    out = Redactor(SECRET_WORDS).redact_message(["ann", "hunter2"], {}, {}, login)
    assert out.args == ["ann", PLACEHOLDER]
    assert out.fields == ["args.password"]


def test_var_positional_named_secret_redacts_every_extra_argument() -> None:
    out = Redactor(SECRET_WORDS).redact_message(["ann", "t1-secret", "t2-secret"], {}, {}, spread)
    assert out.args == ["ann", PLACEHOLDER, PLACEHOLDER]


def test_nested_values_in_args_kwargs_and_options_are_walked() -> None:
    options: dict[str, Any] = {"headers": {"Authorization": "Bearer abcdef"}, "tenant": "t1"}
    out = Redactor(SECRET_WORDS).redact_message(
        [{"config": [{"token": "tok-999"}]}], {"payload": {"cookie": "c=1234"}}, options
    )
    assert out.args == [{"config": [{"token": PLACEHOLDER}]}]
    assert out.kwargs == {"payload": {"cookie": PLACEHOLDER}}
    assert out.options == {"headers": {"Authorization": PLACEHOLDER}, "tenant": "t1"}
    assert out.fields == ["args[0].config[0].token", "kwargs.payload.cookie", "options.headers.Authorization"]


def test_configured_words_replace_the_defaults() -> None:
    redactor = Redactor(["pin"])
    out = redactor.redact_message([], {"pin": "1234", "password": "kept"}, {})
    assert out.kwargs == {"pin": PLACEHOLDER, "password": "kept"}


def test_redacted_values_are_scrubbed_from_free_text() -> None:
    out = Redactor(SECRET_WORDS).redact_message(["ann", "hunter2"], {}, {}, login)
    assert out.scrub("login failed for ann with 'hunter2'") == f"login failed for ann with '{PLACEHOLDER}'"
    assert out.scrub(None) is None


def test_input_is_not_mutated() -> None:
    kwargs = {"password": "hunter2"}
    Redactor(SECRET_WORDS).redact_message([], kwargs, {})
    assert kwargs == {"password": "hunter2"}
