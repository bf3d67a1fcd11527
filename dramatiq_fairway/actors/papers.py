"""Research papers on queue ``papers``: a citation crawl, PDF summaries, Obsidian notes.

Metadata comes from a :class:`MetadataSource`, chosen by ``FAIRWAY_ACTORS__PAPERS_SOURCE``: the
offline corpus shipped in this package (``corpus``, the default, no network) or the Semantic
Scholar Graph API (``semantic_scholar``, at ``FAIRWAY_ACTORS__SEMANTIC_SCHOLAR_URL`` with
``__SEMANTIC_SCHOLAR_API_KEY``), whose HTTP 429 becomes
:class:`RateLimited` with the server's ``Retry-After`` and whose crawl messages carry the
``semantic_scholar`` breaker when the stack has breakers.

The crawl fans out over references, one message per paper, each at a priority drawn from the
reference's citations per year, so influential papers are fetched first when the queue is busy.
The domain (sources, priorities, summaries, notes) is in ``papers_model.py``, the crawl's state
in ``papers_state.py``; both are re-exported here.
"""

from __future__ import annotations

import time
import uuid
from functools import cache
from typing import Any

import dramatiq

from ..errors import PermanentError

# The domain and the crawl's state, re-exported: code and tests import them from here.
from .papers_model import (
    DEFAULT_RETRY_AFTER,
    SEMANTIC_SCHOLAR_URL,
    STOPWORDS,
    SUMMARY_SENTENCES,
    ChildFetch,
    MetadataSource,
    OfflineCorpus,
    PaperMetadata,
    PaperNotFound,
    PdfSummary,
    Reference,
    SemanticScholarSource,
    citations_per_year,
    content_words,
    extract_pdf_text,
    extractive_summary,
    note_name,
    paper_priority,
    render_note,
    retry_after_seconds,
    split_sentences,
    summarize,
    wikilink,
    write_note,
)
from .papers_state import CRAWL_TTL, MAX_DEPTH, CrawlStore, crawl_step
from .settings import load_actor_settings
from .state_store import state_store

__all__ = [
    "CRAWL_TTL",
    "DEFAULT_RETRY_AFTER",
    "MAX_DEPTH",
    "QUEUE",
    "SEMANTIC_SCHOLAR_BREAKER",
    "SEMANTIC_SCHOLAR_URL",
    "STOPWORDS",
    "SUMMARY_SENTENCES",
    "ChildFetch",
    "CrawlStore",
    "MetadataSource",
    "OfflineCorpus",
    "PaperMetadata",
    "PaperNotFound",
    "PdfSummary",
    "Reference",
    "SemanticScholarSource",
    "citations_per_year",
    "content_words",
    "crawl_options",
    "crawl_step",
    "crawl_store",
    "extract_pdf_text",
    "extractive_summary",
    "fetch_paper_metadata",
    "generate_markdown",
    "note_name",
    "paper_priority",
    "render_note",
    "retry_after_seconds",
    "source_named",
    "split_sentences",
    "summarize",
    "summarize_pdf",
    "wikilink",
    "write_note",
]

QUEUE = "papers"
SEMANTIC_SCHOLAR_BREAKER = "semantic_scholar"


# --- Actors ------------------------------------------------------------------------------------


def crawl_store(crawl_id: str) -> CrawlStore:
    """What crawl ``crawl_id`` claimed and fetched so far: it is done when both counts agree."""
    client, namespace = state_store()
    return CrawlStore(client, namespace, crawl_id)


@cache
def source_named(name: str | None = None) -> MetadataSource:
    """The metadata source called ``name``; None: the one ``FAIRWAY_ACTORS__PAPERS_SOURCE`` names."""
    settings = load_actor_settings()
    name = name or settings.papers_source
    if name == OfflineCorpus.name:
        return OfflineCorpus()
    if name == SemanticScholarSource.name:
        return SemanticScholarSource(settings.semantic_scholar_url, api_key=settings.semantic_scholar_api_key)
    raise PermanentError(f"unknown metadata source {name!r}; use 'corpus' or 'semantic_scholar'")


def crawl_options(broker: dramatiq.Broker, child: ChildFetch, source: str) -> dict[str, Any]:
    """Message options for a child fetch: its priority, and the breaker when it calls the API."""
    wanted: dict[str, Any] = {"priority_level": child.priority.name}
    if source == SemanticScholarSource.name:
        wanted["breaker"] = SEMANTIC_SCHOLAR_BREAKER
    return {name: value for name, value in wanted.items() if name in broker.actor_options}


@dramatiq.actor(queue_name=QUEUE, actor_name="papers.fetch_paper_metadata")
def fetch_paper_metadata(
    paper_id: str, depth: int = 1, crawl_id: str | None = None, source: str | None = None
) -> dict[str, Any]:
    """Fetch a paper and, while ``depth`` remains, each of its references once per crawl.

    ``source`` None uses ``FAIRWAY_ACTORS__PAPERS_SOURCE``; the children get the source it
    resolved to, so one crawl never mixes sources.
    """
    crawl_id = crawl_id or uuid.uuid4().hex
    store = crawl_store(crawl_id)
    store.claim([paper_id])
    metadata_source = source_named(source)
    metadata, children = crawl_step(metadata_source, store, paper_id, depth, time.gmtime().tm_year)
    for child in children:
        fetch_paper_metadata.send_with_options(
            args=(child.id, child.depth, crawl_id, metadata_source.name),
            **crawl_options(fetch_paper_metadata.broker, child, metadata_source.name),
        )
    return {"crawl_id": crawl_id, **metadata.model_dump()}


@dramatiq.actor(queue_name=QUEUE, actor_name="papers.summarize_pdf")
def summarize_pdf(path: str, sentences: int = SUMMARY_SENTENCES) -> dict[str, Any]:
    return summarize(path, sentences).model_dump()


@dramatiq.actor(queue_name=QUEUE, actor_name="papers.generate_markdown")
def generate_markdown(paper_id: str, vault_dir: str, source: str | None = None, pdf_path: str | None = None) -> str:
    """Write the paper's Obsidian note (with a summary of its PDF when given); returns the note's path."""
    metadata = source_named(source).get(paper_id)
    summary = summarize(pdf_path) if pdf_path else None
    return str(write_note(vault_dir, metadata, summary))
