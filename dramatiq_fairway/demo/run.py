"""``fairway demo``: the domain actors end to end on the configured broker, with things going wrong.

:func:`run_demo` starts a real ``dramatiq`` worker on :mod:`dramatiq_fairway.demo.app` (a module
inside the package, so it works from any directory) and sends a mix of jobs:

- a federated round (queue ``fl``, tenant ``hospital-lab``): CRITICAL health checks, five clients
  training under differential privacy, one of whom has spent its epsilon budget already: a
  *permanent* failure, dead-lettered at once; the round aggregates the other four once its
  deadline passes (quorum 80 %); a BATCH data sync;
- a photo import (queue ``photos``, tenants = owners ``alice``, ``bob``, ``carol``): real JPEGs made
  with Pillow, each scored and then edited and exported at the priority its score earns (HIGH when
  the owner asked for it), and a LOW grouping of near-duplicates;
- a citation crawl (queue ``papers``, tenant ``library``) against a Semantic Scholar stand-in on
  127.0.0.1 that starts in an *outage*: its 503s are *transient* failures, retried, until the
  ``semantic_scholar`` breaker opens and holds the crawl back; the demo then ends the outage (with
  one 429 for a *rate-limited* retry) and the breaker closes again; and two BATCH notes.

Everything runs in a namespace of its own, deleted at the end, and the summary is read from the
state store: per-tenant jobs and waits, retries by classification, dead letters by fingerprint,
breaker transitions. The worker is stopped, and so is the embedded Redis if the demo started it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
from dramatiq import Actor, Broker
from PIL import Image, ImageDraw, ImageFilter
from PIL.ExifTags import Base
from pydantic import BaseModel

from ..connections import state_store_client, uses_embedded
from ..embedded import EmbeddedRedis
from ..errors import FairwayError
from ..priority import Priority
from ..settings import Settings
from ..setup import setup
from ..store import delete_namespace
from ..store.dead_letters import DeadLetter, DeadLetterStore
from ..store.keys import demo_breakers_key, demo_finished_key
from .ledger import BreakerTransition, FinishedJob

WORKER_MODULE = "dramatiq_fairway.demo.app"
DEFAULT_JOBS = 40
FIXED_JOBS = 18  # FL 12, papers 5, photo grouping 1: the rest of --jobs are photos
MIN_JOBS = FIXED_JOBS + 3
TIMEOUT = 150.0
OUTAGE_LIMIT = 30.0  # end the outage after this long even if the breaker never opened
SCHOLAR_BREAKER = "semantic_scholar"
# Small enough that the breaker trips and recovers within seconds of a demo.
DEMO_BREAKER_POLICY = {
    "minimum_calls": 3,
    "window_size": 6,
    "failure_rate_threshold": 0.5,
    "open_duration": 1.5,
    "max_open_duration": 4,
    "half_open_max_calls": 1,
}
FAST_RETRIES = {"min_backoff": 200, "max_backoff": 2000, "max_retries": 20}

FL_TENANT = "hospital-lab"
FL_CLIENTS = [f"clinic-{name}" for name in ("a", "b", "c", "d", "e")]
SPENT_CLIENT = FL_CLIENTS[-1]
# Loose (epsilon 20 per round): with four clients, noise strict enough for a tight budget would
# drown the model; the point shown is the budget running out.
FL_PRIVACY = {"epsilon": 20.0, "clip_norm": 2.0, "budget": 60.0}
FL_DEADLINE_S = 4.0
FL_SEED = 7
ROUND_ID = "demo-round"
CRAWL_ID = "demo-crawl"
PHOTO_OWNERS = ("alice", "bob", "carol")
PAPERS_TENANT = "library"
CRAWL_ROOTS = ("arXiv:1602.05629", "arXiv:1607.00133", "arXiv:1512.03385")
NOTE_PAPERS = ("arXiv:1706.03762", "arXiv:1810.04805")


class TenantSummary(BaseModel):
    tenant: str
    jobs: int
    dead_letters: int
    wait_avg_s: float
    wait_max_s: float


class DeadLetterGroup(BaseModel):
    fingerprint: str
    count: int
    reason: str
    error_type: str | None
    actor: str | None
    error_message: str | None


class DemoSummary(BaseModel):
    broker: str
    jobs_sent: int
    jobs_finished: int
    seconds: float
    tenants: list[TenantSummary]
    priority_levels: dict[str, int]
    retries: dict[str, int]
    dead_letters: list[DeadLetterGroup]
    breaker_transitions: list[BreakerTransition]
    fl_round: dict[str, Any]
    photos_exported: int
    papers_fetched: int
    notes_written: int


@dataclass
class DemoProgress:
    """What the live display shows; ``done``/``total`` per domain."""

    done: dict[str, int]
    total: dict[str, int]
    dead_letters: dict[str, int]
    breaker: str
    outage: bool


def tenant_rows(seen: list[FinishedJob], records: list[DeadLetter]) -> list[TenantSummary]:
    """Per tenant: jobs finished (succeeded or dead-lettered, so the rows add up to the summary's
    ``jobs_finished``), of which dead-lettered, and the waits of the succeeded ones."""
    waits: dict[str, list[float]] = defaultdict(list)
    for job in seen:
        waits[job.tenant].append(job.wait_s)
    dead_by_tenant = Counter(record.tenant for record in records)
    return [
        TenantSummary(
            tenant=tenant,
            jobs=len(waits[tenant]) + dead_by_tenant[tenant],
            dead_letters=dead_by_tenant[tenant],
            wait_avg_s=round(float(np.mean(waits[tenant])), 3) if waits[tenant] else 0.0,
            wait_max_s=round(max(waits[tenant]), 3) if waits[tenant] else 0.0,
        )
        for tenant in sorted(set(waits) | set(dead_by_tenant))
    ]


class DemoFailed(FairwayError):
    """The demo did not finish; the message says what was missing and where the worker log is."""


def run_demo(
    settings: Settings, jobs: int = DEFAULT_JOBS, *, threads: int = 8, on_progress: Callable[[DemoProgress], None]
) -> DemoSummary:
    if jobs < MIN_JOBS:
        raise ValueError(f"--jobs: {jobs} is too few; the demo's scenario needs at least {MIN_JOBS}")
    run = settings.model_copy(update={"namespace": f"{settings.namespace}-demo-{uuid.uuid4().hex[:8]}"})
    embedded = EmbeddedRedis(settings.data_dir) if uses_embedded(settings) else None
    started_server = embedded.ensure_running() if embedded else False
    try:
        with ExitStack() as stack:
            return _Demo(run, jobs, threads, stack).run(on_progress)
    finally:
        if embedded is not None and started_server:
            embedded.stop()


class _Demo:
    def __init__(self, settings: Settings, jobs: int, threads: int, stack: ExitStack) -> None:
        self.settings = settings
        self.jobs = jobs
        self.photos = jobs - FIXED_JOBS
        self.threads = threads
        self.stack = stack
        self.client = state_store_client(settings)
        stack.callback(self._delete_namespace)
        self.broker: Broker = setup(settings)
        stack.callback(self.broker.close)
        self.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fairway-demo-")))
        # Imported once the broker above is the global one: the actors package sets one up otherwise.
        from ..actors import fl, papers, photos
        from .scholar import ScholarStandIn

        self.fl, self.papers, self.photos_module = fl, papers, photos
        self.scholar = ScholarStandIn().start()
        stack.callback(self.scholar.stop)

    # -- the run ---------------------------------------------------------------------------------

    def run(self, on_progress: Callable[[DemoProgress], None]) -> DemoSummary:
        self.scholar.outage(True)
        log = self.workdir.parent / f"fairway-demo-{self.settings.namespace}.log"
        worker = self.stack.enter_context(_dramatiq_worker(self._worker_env(), self.threads, log))
        started = time.monotonic()
        photo_paths = make_photos(self.workdir / "incoming", self.photos)
        self._send(photo_paths)
        expected = self._expected()
        seen: list[FinishedJob] = []
        outage_began = time.monotonic()
        while True:
            if worker.poll() is not None:
                raise DemoFailed(f"the dramatiq worker exited with {worker.returncode}; its log: {log}")
            raw = self.client.lrange(demo_finished_key(self.settings.namespace), len(seen), -1)
            seen += [FinishedJob.model_validate_json(entry) for entry in raw]
            transitions = self._transitions()
            if self.scholar.down and (
                any(t.to_state == "open" for t in transitions) or time.monotonic() - outage_began > OUTAGE_LIMIT
            ):
                # The dependency comes back, saying "slow down" once before it serves again.
                self.scholar.rate_limit(1, 1.0)
                self.scholar.outage(False)
            dead = Counter(record.queue for record in DeadLetterStore(self.settings, client=self.client).iter_records())
            done = self._done(seen, dead)
            on_progress(
                DemoProgress(
                    done=done,
                    total=expected,
                    breaker=transitions[-1].to_state if transitions else "closed",
                    dead_letters={queue: dead[queue] for queue in expected},
                    outage=self.scholar.down,
                )
            )
            if all(done[name] >= total for name, total in expected.items()) and self._round_report() is not None:
                break
            if time.monotonic() - started > TIMEOUT:
                missing = {name: f"{done[name]}/{total}" for name, total in expected.items() if done[name] < total}
                raise DemoFailed(f"unfinished after {TIMEOUT:.0f}s: {missing}; worker log: {log}")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        log.unlink(missing_ok=True)
        return self._summary(seen, elapsed)

    def _worker_env(self) -> dict[str, str]:
        keys = {**self.settings.breaker.keys, SCHOLAR_BREAKER: DEMO_BREAKER_POLICY}
        return {
            **os.environ,
            "FAIRWAY_BROKER": self.settings.broker,
            "FAIRWAY_NAMESPACE": self.settings.namespace,
            "FAIRWAY_DATA_DIR": str(self.settings.data_dir),
            "FAIRWAY_ACTORS__PAPERS_SOURCE": "semantic_scholar",
            "FAIRWAY_ACTORS__SEMANTIC_SCHOLAR_URL": self.scholar.url,
            "FAIRWAY_BREAKER__KEYS": json.dumps(keys),
            # An ephemeral port: a demo must not collide with an exporter already running here.
            "FAIRWAY_METRICS__PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }

    def _send(self, photo_paths: list[Path]) -> None:
        fl, papers, photos = self.fl, self.papers, self.photos_module
        lab = {"tenant": FL_TENANT}
        for client in FL_CLIENTS:
            self._enqueue(fl.client_health_check, (client, FL_SEED), priority=Priority.CRITICAL, **lab)
        fed_round = fl.FederatedRound(self.client, self.settings.namespace, ROUND_ID)
        privacy = fl.PrivacyConfig.model_validate(FL_PRIVACY)
        # This clinic used its whole privacy budget in earlier rounds: its training must fail for good.
        fl.EpsilonLedger(self.client, self.settings.namespace).spend(
            SPENT_CLIENT, "earlier-rounds", privacy.budget, privacy.budget
        )
        fl.open_round(fed_round, FL_CLIENTS, seed=FL_SEED, now=time.time(), deadline_s=FL_DEADLINE_S, privacy=privacy)
        for client in FL_CLIENTS:
            self._enqueue(fl.train_local_model, (ROUND_ID, client), priority=Priority.HIGH, **lab)
        self._enqueue(fl.aggregate_models, (ROUND_ID,), priority=Priority.HIGH, delay=int(FL_DEADLINE_S * 1000), **lab)
        sync_dir = str(self.workdir / "fl-sync")
        self._enqueue(fl.sync_client_data, (FL_CLIENTS[0], FL_SEED, sync_dir), priority=Priority.BATCH, **lab)

        for index, path in enumerate(photo_paths):
            owner = PHOTO_OWNERS[index % len(PHOTO_OWNERS)]
            requested = index % 4 == 0
            self._enqueue(
                photos.process_photo,
                (str(path), owner, str(self.workdir / "out" / owner), "vivid", requested),
                priority=Priority.HIGH if requested else Priority.NORMAL,
                tenant=owner,
            )
        self._enqueue(
            photos.group_similar_photos,
            ([str(path) for path in photo_paths],),
            priority=Priority.LOW,
            tenant=PHOTO_OWNERS[0],
        )

        for root in CRAWL_ROOTS:
            self._enqueue(
                papers.fetch_paper_metadata,
                (root, 1, CRAWL_ID),
                priority=Priority.NORMAL,
                tenant=PAPERS_TENANT,
                breaker=SCHOLAR_BREAKER,
                **FAST_RETRIES,
            )
        for paper in NOTE_PAPERS:
            self._enqueue(
                papers.generate_markdown,
                (paper, str(self.workdir / "vault"), papers.OfflineCorpus.name),
                priority=Priority.BATCH,
                tenant=PAPERS_TENANT,
            )

    def _enqueue(self, actor: Actor[Any, Any], args: tuple[Any, ...], *, priority: Priority, **options: Any) -> None:
        if actor.actor_name not in self.broker.actors:
            self.broker.declare_actor(actor)
        delay = options.pop("delay", None)
        self.broker.enqueue(actor.message_with_options(args=args, priority_level=priority.name, **options), delay=delay)

    # -- progress --------------------------------------------------------------------------------

    def _expected(self) -> dict[str, int]:
        corpus = self.papers.OfflineCorpus()
        crawled = set(CRAWL_ROOTS) | {ref for root in CRAWL_ROOTS for ref in corpus.records[root]["references"]}
        return {
            "fl": len(FL_CLIENTS) * 2 + 1,  # health checks, trainings (one dead-lettered), sync
            "photos": self.photos * 3 + 1,  # score, edit, export each; one grouping
            "papers": len(crawled) + len(NOTE_PAPERS),
        }

    def _done(self, seen: list[FinishedJob], dead: Counter[str]) -> dict[str, int]:
        """Jobs ended per queue, succeeded or dead-lettered (the aggregation runs 1-2 times: not counted)."""
        counts = Counter(job.queue for job in seen if job.actor != "fl.aggregate_models") + dead
        return {queue: counts[queue] for queue in ("fl", "photos", "papers")}

    def _transitions(self) -> list[BreakerTransition]:
        raw = self.client.lrange(demo_breakers_key(self.settings.namespace), 0, -1)
        return [BreakerTransition.model_validate_json(entry) for entry in raw]

    def _round_report(self) -> Any:
        return self.fl.FederatedRound(self.client, self.settings.namespace, ROUND_ID).report()

    # -- the summary -----------------------------------------------------------------------------

    def _summary(self, seen: list[FinishedJob], elapsed: float) -> DemoSummary:
        records = list(DeadLetterStore(self.settings, client=self.client).iter_records())
        retries: Counter[str] = Counter(reason for job in seen for reason in job.retried_for)
        for record in records:
            retries.update(str(a["classification"]) for a in record.options.get("attempt_history", [])[:-1])
        tenants = tenant_rows(seen, records)
        groups: dict[str, list[Any]] = defaultdict(list)
        for record in records:
            groups[record.fingerprint].append(record)
        dead_letters = [
            DeadLetterGroup(
                fingerprint=fingerprint,
                count=len(members),
                reason=members[0].reason,
                error_type=members[0].error_type,
                actor=members[0].actor,
                error_message=members[0].error_message,
            )
            for fingerprint, members in sorted(groups.items(), key=lambda item: -len(item[1]))
        ]
        report = self._round_report()
        levels = Counter(job.priority_level for job in seen) + Counter(record.priority_level for record in records)
        return DemoSummary(
            broker=self.settings.broker,
            jobs_sent=self.jobs,
            jobs_finished=len(seen) + len(records),
            seconds=round(elapsed, 2),
            tenants=tenants,
            priority_levels={level.name: levels[level.name] for level in Priority},
            retries=dict(sorted(retries.items())),
            dead_letters=dead_letters,
            breaker_transitions=self._transitions(),
            fl_round={
                "participants": report.participants,
                "missing": report.missing,
                "global_accuracy": round(report.global_accuracy, 3),
                "mean_client_accuracy": round(report.mean_client_accuracy, 3),
            },
            photos_exported=sum(1 for job in seen if job.actor == "photos.export_photo"),
            papers_fetched=sum(1 for job in seen if job.actor == "papers.fetch_paper_metadata"),
            notes_written=len(list((self.workdir / "vault").glob("*.md"))),
        )

    def _delete_namespace(self) -> None:
        """Everything of the run: its state (``ns:*``) and, on Redis, its queues (``{ns:...}``)."""
        # The server going away (embedded) or unreachable leaves nothing more to clean here.
        with suppress(redis.RedisError):
            delete_namespace(self.client, self.settings.namespace)


@contextmanager
def _dramatiq_worker(env: dict[str, str], threads: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The real ``dramatiq`` command on the demo module, run outside any checkout; stopped at the end."""
    command = [sys.executable, "-m", "dramatiq", WORKER_MODULE, "--processes", "1", "--threads", str(threads)]
    with open(log, "wb") as output:
        worker = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        try:
            yield worker
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()


def make_photos(directory: Path, count: int, size: tuple[int, int] = (480, 360)) -> list[Path]:
    """``count`` real JPEGs with camera EXIF: scenes of shapes, some blurred (they score lower),
    every fifth a near-duplicate of the one before (a second shot, slightly brighter)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        duplicate = index % 5 == 4
        image = _scene(index - 1 if duplicate else index, size)
        if duplicate:
            image = Image.eval(image, lambda value: min(255, value + 6))
        blur = (0, 0, 1.5, 4, 0)[index % 5]
        if blur:
            image = image.filter(ImageFilter.GaussianBlur(blur))
        exif = Image.Exif()
        exif[Base.Make] = "Fairway"
        exif[Base.Model] = "Demo-1"
        exif[Base.DateTime] = f"2025:06:{1 + index % 28:02d} 12:00:00"
        path = directory / f"IMG_{index:04d}.jpg"
        image.save(path, "JPEG", quality=90, exif=exif)
        paths.append(path)
    return paths


def _scene(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    base = np.stack(np.broadcast_arrays(90 + 80 * x, 70 + 100 * y, 120 + 60 * x * y), axis=-1)
    image = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(20):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(20, 160)), y0 + int(rng.integers(20, 120)))
        colour = (int(rng.integers(0, 256)), int(rng.integers(0, 256)), int(rng.integers(0, 256)))
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape(box, fill=colour, outline=(0, 0, 0), width=2)
    return image
