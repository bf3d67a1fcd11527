"""Export of dead letters: records written as JSON Lines or CSV (``fairway dlq export``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import Literal, TextIO

from .dead_letter_model import DeadLetter


def export_records(records: Iterable[DeadLetter], out: TextIO, fmt: Literal["json", "csv"]) -> int:
    """Write ``records`` to ``out`` as JSON Lines or CSV (nested values as JSON), in order; the number written."""
    written = 0
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=list(DeadLetter.model_fields))
        writer.writeheader()
    for record in records:
        if writer is None:
            out.write(record.model_dump_json() + "\n")
        else:
            row = record.model_dump(mode="json")
            writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()})
        written += 1
    return written
