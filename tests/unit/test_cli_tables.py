"""Tables never cut what the next command needs (ids, fingerprints), and the demo's totals agree;
the real-Redis case is in tests/cli/test_cli_tables.py."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console

from dramatiq_fairway.cli import demo as demo_cli
from dramatiq_fairway.cli import dlq as dlq_cli
from dramatiq_fairway.demo.ledger import FinishedJob
from dramatiq_fairway.demo.run import DeadLetterGroup, DemoSummary, tenant_rows
from dramatiq_fairway.failures.fingerprint import fingerprint
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.store.dead_letters import DeadLetter

FINGERPRINT = fingerprint("ValueError", "the ledger is closed", None)


def dead_letter(tenant: str = "acme", **fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "queue": "photos_with_a_long_queue_name",
        "actor": "photos.evaluate_quality_of_a_long_actor_name",
        "error_type": "dramatiq_fairway.errors.PermanentError",
        "fingerprint": FINGERPRINT,
        "reason": "retries_exhausted",
        "tenant": tenant,
        "failed_at": datetime.now(UTC) - timedelta(minutes=1),
    }
    return DeadLetter(**{**values, **fields})


def column_text(text: str, column: int) -> str:
    """Every character of one column of a rich table's body, top to bottom (folded lines joined)."""
    body = text.rsplit("╇", maxsplit=1)[-1].splitlines()[1:]
    return "".join(parts[column].strip() for line in body if len(parts := line.split("│")) > column + 1)


def test_a_narrow_terminal_folds_ids_and_fingerprints_but_never_cuts_them() -> None:
    records = [dead_letter().model_dump(mode="json") for _ in range(2)]
    out = io.StringIO()
    terminal = Console(file=out, force_terminal=True, width=60, color_system=None)
    dlq_cli._render_list(terminal, records)
    text = out.getvalue()
    assert column_text(text, 1) == "".join(record["id"] for record in records)
    assert column_text(text, 8) == FINGERPRINT * 2


def test_the_demo_prints_the_stored_fingerprint_whole() -> None:
    assert len(FINGERPRINT) == 16
    summary = DemoSummary(
        broker="redis",
        jobs_sent=21,
        jobs_finished=1,
        seconds=1.0,
        tenants=[],
        priority_levels={level.name: 0 for level in Priority},
        retries={},
        dead_letters=[
            DeadLetterGroup(
                fingerprint=FINGERPRINT,
                count=1,
                reason="permanent",
                error_type="ValueError",
                actor="fl.train_local_model",
                error_message="closed",
            )
        ],
        breaker_transitions=[],
        fl_round={"participants": [], "missing": [], "global_accuracy": 0.0, "mean_client_accuracy": 0.0},
        photos_exported=0,
        papers_fetched=0,
        notes_written=0,
    )
    console = Console(record=True, width=160)
    demo_cli._render(console, summary.model_dump(mode="json"))
    assert FINGERPRINT in console.export_text()


def test_the_demo_tenant_rows_add_up_to_the_jobs_finished() -> None:
    def finished(tenant: str) -> FinishedJob:
        return FinishedJob(
            actor="photos.export_photo",
            queue="photos",
            tenant=tenant,
            priority_level="NORMAL",
            wait_s=0.5,
            retried_for=[],
        )

    seen = [finished("alice"), finished("alice"), finished("bob")]
    records = [dead_letter("alice"), dead_letter("carol")]

    rows = {row.tenant: row for row in tenant_rows(seen, records)}

    assert sum(row.jobs for row in rows.values()) == len(seen) + len(records)
    assert (rows["alice"].jobs, rows["alice"].dead_letters) == (3, 1)
    assert (rows["carol"].jobs, rows["carol"].dead_letters, rows["carol"].wait_max_s) == (1, 1, 0.0)
