"""`fairway demo` end to end on the embedded default and on RabbitMQ, and the pieces it is built of."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image
from rich.console import Console

from dramatiq_fairway.actors import papers, photos
from dramatiq_fairway.cli import demo as demo_cli
from dramatiq_fairway.demo.ledger import BreakerTransition, ready_at
from dramatiq_fairway.demo.run import MIN_JOBS, PHOTO_OWNERS, DeadLetterGroup, DemoSummary, TenantSummary, make_photos
from dramatiq_fairway.demo.scholar import ScholarStandIn
from dramatiq_fairway.embedded import EmbeddedRedis
from dramatiq_fairway.errors import RateLimited, TransientError
from dramatiq_fairway.priority import Priority


def run_fairway_demo(data_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FAIRWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "dramatiq_fairway.cli", "demo", "--jobs", str(MIN_JOBS), "--json"],
        env={**clean, "FAIRWAY_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=240,
        cwd="/",
        check=False,
    )


# The real dramatiq command end to end: slow, so with the chaos tests outside the quick subset.
@pytest.mark.chaos
@pytest.mark.parametrize("kind", ["embedded", "rabbitmq"])
def test_fairway_demo_runs_every_failure_mode_and_leaves_no_server(kind: str, short_tmp: Path) -> None:
    result = run_fairway_demo(short_tmp, **({"FAIRWAY_BROKER": kind} if kind != "embedded" else {}))
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    assert summary["broker"] == kind
    assert summary["jobs_sent"] == MIN_JOBS
    # Several tenants, all five levels.
    tenants = {row["tenant"]: row for row in summary["tenants"]}
    assert {*PHOTO_OWNERS, "hospital-lab", "library"} <= set(tenants)
    assert all(row["wait_max_s"] >= row["wait_avg_s"] >= 0 for row in tenants.values())
    assert all(summary["priority_levels"][level.name] > 0 for level in Priority)
    # The outage's 503s were retried as transient, the 429 as rate limited.
    assert summary["retries"]["transient"] >= 1
    assert summary["retries"]["rate_limited"] >= 1
    # The over-budget clinic is the one dead letter, permanent, and the round went on without it.
    [dead] = summary["dead_letters"]
    assert (dead["reason"], dead["actor"], dead["count"]) == ("permanent", "fl.train_local_model", 1)
    assert tenants["hospital-lab"]["dead_letters"] == 1
    # The per-tenant rows count every finished job, dead-lettered ones included: they add up.
    assert sum(row["jobs"] for row in tenants.values()) == summary["jobs_finished"]
    assert summary["fl_round"]["missing"] == ["clinic-e"]
    # The breaker opened on the outage and closed again.
    moves = [(t["from_state"], t["to_state"]) for t in summary["breaker_transitions"]]
    assert moves[0] == ("closed", "open")
    assert moves[-1][1] == "closed"
    assert {t["key"] for t in summary["breaker_transitions"]} == {"semantic_scholar"}
    assert summary["photos_exported"] == MIN_JOBS - 18
    assert summary["notes_written"] == 2
    # The demo started the embedded Redis (the state store on RabbitMQ too) and stopped it.
    assert not EmbeddedRedis(short_tmp).status().running
    with pytest.raises(redis.ConnectionError):
        redis.Redis(unix_socket_path=str(short_tmp / "redis.sock")).ping()


def test_fairway_demo_refuses_too_few_jobs(short_tmp: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FAIRWAY_")}
    result = subprocess.run(
        [sys.executable, "-m", "dramatiq_fairway.cli", "demo", "--jobs", "3"],
        env={**clean, "FAIRWAY_DATA_DIR": str(short_tmp)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"fairway demo: error: --jobs: 3 is too few, the scenario needs at least {MIN_JOBS}"
    assert not (short_tmp / "redis.sock").exists()


def test_demo_photos_are_real_jpegs_of_every_quality(tmp_path: Path) -> None:
    paths = make_photos(tmp_path, 10)
    assert len(paths) == 10
    with Image.open(paths[0]) as image:
        assert image.format == "JPEG"
        assert photos.read_exif(image).camera_model == "Demo-1"
    levels = {photos.assess(path).priority_level for path in paths}
    assert len(levels) >= 2  # blurred shots score lower than sharp ones
    hashes = {}
    for path in paths:
        with Image.open(path) as image:
            hashes[str(path)] = photos.photo_hashes(image)
    # Every fifth photo is a second shot of the one before it.
    groups = photos.group_by_hash(hashes)
    assert [str(paths[3]), str(paths[4])] in groups


def test_scholar_stand_in_serves_the_corpus_to_the_real_client() -> None:
    stand_in = ScholarStandIn().start()
    source = papers.SemanticScholarSource(stand_in.url, timeout=5)
    try:
        corpus = papers.OfflineCorpus()
        for paper_id in ("arXiv:1706.03762", "DOI:10.1145/3065386"):
            assert source.get(paper_id) == corpus.get(paper_id)
        with pytest.raises(papers.PaperNotFound):
            source.get("arXiv:0000.00000")
        stand_in.outage(True)
        with pytest.raises(TransientError, match="503"):
            source.get("arXiv:1706.03762")
        stand_in.outage(False)
        stand_in.rate_limit(1, 2.5)
        with pytest.raises(RateLimited) as limited:
            source.get("arXiv:1706.03762")
        assert limited.value.retry_after == 2.5
        assert source.get("arXiv:1706.03762").title == "Attention Is All You Need"
        assert stand_in.answers == {200: 3, 404: 1, 503: 1, 429: 1}
    finally:
        source.close()
        stand_in.stop()


def test_wait_counts_from_the_latest_of_enqueue_failure_and_eta() -> None:
    assert ready_at({}, 1_000) == 1.0
    assert ready_at({"requeue_timestamp": 5_000}, 1_000) == 5.0
    assert ready_at({"requeue_timestamp": 5_000, "eta": 9_000}, 1_000) == 9.0


def test_the_summary_renders_for_people() -> None:
    summary = DemoSummary(
        broker="embedded",
        jobs_sent=21,
        jobs_finished=40,
        seconds=9.5,
        tenants=[TenantSummary(tenant="alice", jobs=4, dead_letters=0, wait_avg_s=0.5, wait_max_s=0.9)],
        priority_levels={level.name: 1 for level in Priority},
        retries={"rate_limited": 1, "transient": 3},
        dead_letters=[
            DeadLetterGroup(
                fingerprint="ba0ff80e96369456",
                count=1,
                reason="permanent",
                error_type="dramatiq_fairway.actors.fl.BudgetExhausted",
                actor="fl.train_local_model",
                error_message="over budget",
            )
        ],
        breaker_transitions=[
            BreakerTransition(key="semantic_scholar", from_state="closed", to_state="open", at=datetime.now(UTC)),
            BreakerTransition(key="semantic_scholar", from_state="open", to_state="closed", at=datetime.now(UTC)),
        ],
        fl_round={"participants": ["a", "b"], "missing": ["c"], "global_accuracy": 0.8, "mean_client_accuracy": 0.7},
        photos_exported=3,
        papers_fetched=10,
        notes_written=2,
    )
    console = Console(record=True, width=160)
    demo_cli._render(console, summary.model_dump(mode="json"))
    text = console.export_text()
    assert "fairway demo on embedded: 21 jobs sent, 40 finished" in text
    assert "Retries by classification: rate_limited 1, transient 3" in text
    assert "BudgetExhausted: over budget" in text
    assert "Breaker semantic_scholar: closed → open → closed" in text
    assert "missing ['c']" in text
