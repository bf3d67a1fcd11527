"""A citation crawl: fetch a paper, then the papers it cites, most influential first.

Run a worker, then the producer::

    dramatiq examples.paper_crawl
    python examples/paper_crawl.py

Metadata comes from the offline corpus shipped in the package, or from the Semantic Scholar API
with ``FAIRWAY_ACTORS__PAPERS_SOURCE=semantic_scholar`` (behind the ``semantic_scholar`` breaker).
The producer also asks for an Obsidian note of the root paper, with wikilinks to its references.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

# Sets up the broker from the FAIRWAY_* settings and declares every domain actor.
from dramatiq_fairway.actors import papers

ROOT = "arXiv:1706.03762"  # Attention Is All You Need
DEPTH = 2


def main(timeout: float = 60.0) -> None:
    with tempfile.TemporaryDirectory(prefix="fairway-vault-") as vault:
        run(Path(vault), timeout)


def run(vault: Path, timeout: float) -> None:
    crawl_id = f"example-{uuid.uuid4().hex[:8]}"
    papers.fetch_paper_metadata.send_with_options(args=(ROOT, DEPTH, crawl_id), priority_level="HIGH")
    papers.generate_markdown.send_with_options(args=(ROOT, str(vault)), priority_level="BATCH")
    store = papers.crawl_store(crawl_id)
    deadline = time.monotonic() + timeout
    # Done when every paper the crawl claimed is recorded (a step claims references before it records).
    while not (fetched := store.papers()) or len(fetched) < store.claimed() or not list(vault.glob("*.md")):
        if time.monotonic() > deadline:
            raise SystemExit(f"crawl {crawl_id} unfinished within {timeout:.0f}s; is a worker running?")
        time.sleep(0.2)
    print(f"crawled {len(fetched)} papers within {DEPTH} references of {ROOT}:")
    for paper in sorted(fetched.values(), key=lambda p: -(p.citation_count or 0)):
        print(f"  {paper.year}  {paper.citation_count or 0:>7}  {paper.title}")
    note = next(vault.glob("*.md"))
    links = [line for line in note.read_text().splitlines() if line.startswith("- [[")]
    print(f"note {note.name} links {len(links)} references, e.g. {links[0]}")


if __name__ == "__main__":
    main()
