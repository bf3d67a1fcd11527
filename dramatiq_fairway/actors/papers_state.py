"""A citation crawl's state in the state store, and one step of the crawl.

Keys (names in ``store/actor_state.py``; they expire ``CRAWL_TTL`` seconds after the crawl's last
write and share the hash tag ``{<crawl>}``):

    {namespace}:papers:crawl:{<crawl>}:seen     set: paper ids claimed by this crawl (each fetched once)
    {namespace}:papers:crawl:{<crawl>}:papers   hash: paper id -> PaperMetadata JSON
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis

from ..errors import PermanentError
from ..priority import Priority
from ..store.actor_state import papers_crawl_prefix
from .papers_model import ChildFetch, MetadataSource, PaperMetadata, citations_per_year, paper_priority

MAX_DEPTH = 3
CRAWL_TTL = 7 * 86_400


class CrawlStore:
    """Which papers one crawl has claimed and what it fetched, in the state store."""

    def __init__(self, client: redis.Redis, namespace: str, crawl_id: str) -> None:
        self.client = client
        prefix = papers_crawl_prefix(namespace, crawl_id)
        self.seen_key = f"{prefix}:seen"
        self.papers_key = f"{prefix}:papers"

    def claim(self, paper_ids: Sequence[str]) -> list[str]:
        """The ids no earlier step of this crawl claimed, now claimed: each paper is fetched once."""
        if not paper_ids:
            return []
        with self.client.pipeline(transaction=True) as pipe:
            for paper_id in paper_ids:
                pipe.sadd(self.seen_key, paper_id)
            pipe.expire(self.seen_key, CRAWL_TTL)
            added = pipe.execute()[:-1]
        return [paper_id for paper_id, new in zip(paper_ids, added, strict=True) if new]

    def save(self, metadata: PaperMetadata) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.papers_key, metadata.id, metadata.model_dump_json())
            pipe.expire(self.papers_key, CRAWL_TTL)
            pipe.execute()

    def claimed(self) -> int:
        return int(self.client.scard(self.seen_key))

    def papers(self) -> dict[str, PaperMetadata]:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.papers_key))
        return {key.decode(): PaperMetadata.model_validate_json(value) for key, value in raw.items()}


def crawl_step(
    source: MetadataSource, store: CrawlStore, paper_id: str, depth: int, current_year: int
) -> tuple[PaperMetadata, list[ChildFetch]]:
    """Fetch one paper, claim the references still to fetch (if depth remains), record the paper.

    Claiming before recording keeps "every claimed paper is recorded" true only once the whole
    crawl is done, which is how a producer tells that it is (:meth:`CrawlStore.claimed`). Children
    come out most urgent first, so that even a stock FIFO queue sees them in that order.
    """
    if not 0 <= depth <= MAX_DEPTH:
        raise PermanentError(f"crawl depth must be between 0 and {MAX_DEPTH}, got {depth}")
    metadata = source.get(paper_id)
    by_id = {ref.id: ref for ref in metadata.references} if depth > 0 else {}
    children = [
        ChildFetch(id=ref_id, depth=depth - 1, priority=paper_priority(ref.citation_count, ref.year, current_year))
        for ref_id in store.claim(list(by_id))
        for ref in [by_id[ref_id]]
    ]
    store.save(metadata)

    def urgency(child: ChildFetch) -> tuple[Priority, float, str]:
        ref = by_id[child.id]
        return child.priority, -(citations_per_year(ref.citation_count, ref.year, current_year) or 0.0), child.id

    children.sort(key=urgency)
    return metadata, children
