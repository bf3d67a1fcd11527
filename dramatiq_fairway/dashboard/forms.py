"""The dashboard's form and query-string fields, read as the `fairway dlq` flags read them; a bad
value is an HTTP 400 naming the field and the value."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from ..ops.durations import parse_duration
from ..priority import Priority
from ..store.dead_letters import DeadLetterFilter

# The `fairway dlq list` flags, spelled as on the command line.
FILTER_PARAMS = ("queue", "actor", "error-type", "fingerprint", "tenant", "reason", "since")
DEFAULT_LIMIT = 50


def dead_letter_filter(params: Mapping[str, Any]) -> DeadLetterFilter:
    """A ``DeadLetterFilter`` from the `fairway dlq list` flags (query parameters or form fields)."""
    values = {name.replace("-", "_"): (params.get(name) or None) for name in FILTER_PARAMS if name != "since"}
    since = params.get("since") or None
    try:
        age = parse_duration(since) if since else None
    except ValueError as error:
        raise HTTPException(400, f"since: {error}") from None
    try:
        return DeadLetterFilter(**values, since=datetime.now(UTC) - age if age else None)
    except ValidationError as error:
        first = error.errors()[0]
        raise HTTPException(400, f"{first['loc'][0]}: {first['input']!r} {first['msg'].lower()}") from None


def selection_of_form(form: FormData) -> tuple[list[str], DeadLetterFilter]:
    ids = [value for value in form.getlist("ids") if isinstance(value, str) and value]
    return ids, dead_letter_filter(form)


def limit_of(text: str | None) -> int:
    if not text:
        return DEFAULT_LIMIT
    if not text.isdigit() or int(text) < 1:
        raise HTTPException(400, f"limit: {text!r} is not a positive whole number")
    return int(text)


def priority_of(text: object) -> Priority:
    try:
        return Priority.parse(text if isinstance(text, str) and text else Priority.HIGH)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None
