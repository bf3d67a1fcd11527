"""What a message's options say about its tenant and priority level, read one way by every part."""

from __future__ import annotations

from typing import Any

import pytest
from dramatiq import Message

from dramatiq_fairway.middlewares.json_logs import job_fields
from dramatiq_fairway.priority import Priority, level_name, level_of
from dramatiq_fairway.tenants import DEFAULT_TENANT, tenant_of


@pytest.mark.parametrize("options", [{}, {"tenant": None}, {"tenant": ""}])
def test_a_missing_or_empty_tenant_is_the_default_tenant(options: dict[str, Any]) -> None:
    assert tenant_of(options) == DEFAULT_TENANT == "default"


def test_a_named_tenant_is_kept() -> None:
    assert tenant_of({"tenant": "acme"}) == "acme"


def test_a_log_line_names_the_default_tenant_for_an_empty_one() -> None:
    # Log lines said "" where the broker queued the message under "default".
    message: Message[Any] = Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={"tenant": ""})

    assert job_fields(message)["tenant"] == "default"


@pytest.mark.parametrize(
    ("options", "expected"),
    [({}, Priority.NORMAL), ({"priority_level": "high"}, Priority.HIGH), ({"priority_level": 5}, Priority.BATCH)],
)
def test_the_level_of_options_defaults_to_normal(options: dict[str, Any], expected: Priority) -> None:
    assert level_of(options) is expected


def test_a_bad_level_names_the_field_and_the_value() -> None:
    with pytest.raises(ValueError, match=r"priority_level: 'urgent'"):
        level_of({"priority_level": "urgent"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("high", "HIGH"), ("HIGH", "HIGH"), (5, "BATCH"), (Priority.LOW, "LOW"), ("urgent", None), ([1], None)],
)
def test_the_level_name_of_an_option_is_the_parsed_levels_or_none(value: object, expected: str | None) -> None:
    # Twice: the second answer comes from what the first remembered.
    assert level_name(value) == expected
    assert level_name(value) == expected


def test_a_remembered_number_does_not_name_a_boolean() -> None:
    assert level_name(1) == "CRITICAL"
    assert level_name(True) is None
