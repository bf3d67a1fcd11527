"""Research papers' domain: metadata and its sources, crawl priorities, PDF summaries, Obsidian notes.

No state store (``papers_state.py``) and no actor (``papers.py``). A :class:`MetadataSource` is
the offline corpus shipped in this package (``corpus``, no network) or the Semantic Scholar Graph
API (``semantic_scholar``), whose HTTP 429 becomes :class:`RateLimited` with the server's
``Retry-After``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field, SecretStr
from pypdf import PdfReader
from pypdf.errors import PdfReadError

from ..errors import PermanentError, RateLimited, TransientError
from ..failures.backoff import parse_retry_after
from ..priority import Priority

SEMANTIC_SCHOLAR_URL = "https://api.semanticscholar.org/graph/v1"
DEFAULT_RETRY_AFTER = 60.0
SUMMARY_SENTENCES = 3


class Reference(BaseModel):
    """A cited paper as the citing paper's record knows it: enough to prioritise fetching it."""

    id: str
    title: str | None = None
    year: int | None = None
    citation_count: int | None = None


class PaperMetadata(BaseModel):
    id: str
    title: str
    authors: list[str] = []
    year: int | None = None
    venue: str | None = None
    citation_count: int | None = None
    abstract: str | None = None
    references: list[Reference] = []


class PaperNotFound(PermanentError):
    """The source has no paper with this id."""

    # Dead letters, metrics and retry rules name an error by its module path: keep the one it had
    # when it lived in papers.py (which re-exports it), so existing records and rules still match.
    __module__ = "dramatiq_fairway.actors.papers"


# --- Sources -----------------------------------------------------------------------------------


class MetadataSource(Protocol):
    name: str

    def get(self, paper_id: str) -> PaperMetadata: ...


class OfflineCorpus:
    """Papers from a JSON corpus (the one shipped as ``corpus.json`` unless given others)."""

    name = "corpus"

    def __init__(self, papers: Iterable[Mapping[str, Any]] | None = None) -> None:
        if papers is None:
            raw = resources.files(__package__).joinpath("corpus.json").read_text(encoding="utf-8")
            papers = json.loads(raw)["papers"]
        self.records = {str(paper["id"]): dict(paper) for paper in papers}

    def get(self, paper_id: str) -> PaperMetadata:
        record = self.records.get(paper_id)
        if record is None:
            raise PaperNotFound(f"paper {paper_id!r} is not in the offline corpus")
        references = [self._reference(ref) for ref in record.get("references", [])]
        return PaperMetadata.model_validate({**record, "references": references})

    def _reference(self, paper_id: str) -> Reference:
        cited = self.records.get(paper_id, {})
        return Reference(
            id=paper_id, title=cited.get("title"), year=cited.get("year"), citation_count=cited.get("citation_count")
        )


def retry_after_seconds(header: str | None, now: datetime, default: float = DEFAULT_RETRY_AFTER) -> float:
    """``Retry-After`` as seconds to wait (``parse_retry_after``); ``default`` when absent or unreadable."""
    seconds = parse_retry_after(header, now=now)
    return default if seconds is None else seconds


class SemanticScholarSource:
    """The Semantic Scholar Graph API (``/paper/{id}``; ids like ``arXiv:1706.03762``, ``DOI:...``).

    Errors are classified for the retry middleware: 429 → ``RateLimited``, 5xx and transport
    failures → ``TransientError``, 404 → ``PaperNotFound``, other 4xx → ``PermanentError``. The API
    key goes in a header and never into a message or an error.
    """

    name = "semantic_scholar"
    FIELDS = ",".join(
        [
            "title",
            "authors",
            "year",
            "venue",
            "citationCount",
            "abstract",
            *(f"references.{field}" for field in ("paperId", "title", "year", "citationCount")),
        ]
    )

    def __init__(
        self,
        base_url: str = SEMANTIC_SCHOLAR_URL,
        *,
        api_key: SecretStr | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"x-api-key": api_key.get_secret_value()} if api_key else {}
        self.client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def get(self, paper_id: str) -> PaperMetadata:
        try:
            response = self.client.get(f"/paper/{quote(paper_id, safe=':')}", params={"fields": self.FIELDS})
        except httpx.TransportError as exc:
            raise TransientError(f"Semantic Scholar unreachable: {type(exc).__name__}") from None
        if response.status_code == 429:
            wait = retry_after_seconds(response.headers.get("Retry-After"), datetime.now(UTC))
            raise RateLimited(wait, f"Semantic Scholar rate limit; retry after {wait:g}s")
        if response.status_code == 404:
            raise PaperNotFound(f"Semantic Scholar has no paper {paper_id!r}")
        if response.status_code >= 500:
            raise TransientError(f"Semantic Scholar answered {response.status_code} for {paper_id!r}")
        if response.status_code >= 400:
            raise PermanentError(f"Semantic Scholar refused {paper_id!r} with {response.status_code}")
        return self._parse(paper_id, response.json())

    @staticmethod
    def _parse(paper_id: str, body: Mapping[str, Any]) -> PaperMetadata:
        return PaperMetadata(
            id=paper_id,
            title=body.get("title") or paper_id,
            authors=[author["name"] for author in body.get("authors") or [] if author.get("name")],
            year=body.get("year"),
            venue=body.get("venue") or None,
            citation_count=body.get("citationCount"),
            abstract=body.get("abstract"),
            references=[
                Reference(
                    id=ref["paperId"],
                    title=ref.get("title"),
                    year=ref.get("year"),
                    citation_count=ref.get("citationCount"),
                )
                for ref in body.get("references") or []
                if ref.get("paperId")
            ],
        )

    def close(self) -> None:
        self.client.close()


# --- Crawl -------------------------------------------------------------------------------------


def citations_per_year(citation_count: int | None, year: int | None, current_year: int) -> float | None:
    """Citations per year since publication (the publication year counts as one)."""
    if citation_count is None or year is None:
        return None
    return citation_count / max(1, current_year - year + 1)


def paper_priority(citation_count: int | None, year: int | None, current_year: int) -> Priority:
    """From citations per year: a recent, much-cited paper beats an old one with more citations.

    A crawl is background work, so it never claims CRITICAL; an unknown paper waits at LOW.
    """
    per_year = citations_per_year(citation_count, year, current_year)
    if per_year is None:
        return Priority.LOW
    if per_year >= 2000:
        return Priority.HIGH
    if per_year >= 200:
        return Priority.NORMAL
    if per_year >= 20:
        return Priority.LOW
    return Priority.BATCH


class ChildFetch(BaseModel):
    """A reference the crawl goes on to fetch: with one level less to go, at its own priority."""

    id: str
    depth: int = Field(ge=0)
    priority: Priority


# --- PDF summary -------------------------------------------------------------------------------

_STOPWORD_TEXT = """
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has
have having he her here hers him his how i if in into is it its itself just me more most my no nor
not now of off on once only or other our ours out over own same she should so some such than that
the their theirs them then there these they this those through to too under until up very was we
were what when where which while who whom why will with would you your yours we us may might must
shall one two three new using used use based show shows shown paper
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_WORD = re.compile(r"[a-z][a-z'-]*[a-z]|[a-z]")


class PdfSummary(BaseModel):
    path: str
    title: str | None
    pages: int
    words: int
    keywords: list[str]
    summary: list[str]


def extract_pdf_text(path: str | Path) -> tuple[str, int, str | None]:
    """(text of all pages, page count, title from the document info) with pypdf."""
    try:
        reader = PdfReader(path)
        text = "\n".join(page.extract_text() or "" for page in reader.pages)
        title = reader.metadata.title if reader.metadata else None
        return text, len(reader.pages), title
    except FileNotFoundError:
        raise PermanentError(f"no PDF at {path}") from None
    except PdfReadError as exc:
        raise PermanentError(f"{path} is not a readable PDF: {exc}") from None


def split_sentences(text: str) -> list[str]:
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", text)  # words hyphenated across lines
    text = re.sub(r"\s+", " ", text).strip()
    return [sentence.strip() for sentence in _SENTENCE_END.split(text) if sentence.strip()]


def content_words(text: str) -> list[str]:
    return [word for word in _WORD.findall(text.lower()) if word not in STOPWORDS and len(word) > 2]


def extractive_summary(text: str, sentences: int = SUMMARY_SENTENCES) -> tuple[list[str], list[str]]:
    """(the best ``sentences`` in document order, the top keywords), by word-frequency scoring.

    A sentence scores the mean normalised frequency of its content words, with a small bonus for
    the opening sentences (where authors state what the text is about). Fragments under five
    words are never chosen.
    """
    candidates = split_sentences(text)
    frequencies = Counter(content_words(text))
    if not frequencies:
        return [], []
    top = max(frequencies.values())
    scored = []
    for position, sentence in enumerate(candidates):
        words = content_words(sentence)
        if len(sentence.split()) < 5 or not words:
            continue
        score = sum(frequencies[word] / top for word in words) / math.sqrt(len(words))
        score *= 1.0 + 0.25 / (1 + position)
        scored.append((score, position))
    chosen = sorted(position for _, position in sorted(scored, reverse=True)[:sentences])
    keywords = [word for word, _ in frequencies.most_common(8)]
    return [candidates[position] for position in chosen], keywords


def summarize(path: str | Path, sentences: int = SUMMARY_SENTENCES) -> PdfSummary:
    text, pages, title = extract_pdf_text(path)
    if not text.strip():
        raise PermanentError(f"{path} has no extractable text (a scan needs OCR first)")
    summary, keywords = extractive_summary(text, sentences)
    return PdfSummary(
        path=str(path), title=title, pages=pages, words=len(text.split()), keywords=keywords, summary=summary
    )


# --- Obsidian notes ----------------------------------------------------------------------------

_UNSAFE_IN_NOTE_NAME = re.compile(r'[\\/:*?"<>|#^\[\]]')


def note_name(title: str) -> str:
    """A note name Obsidian accepts in a file name and inside ``[[...]]``."""
    name = re.sub(r"\s+", " ", _UNSAFE_IN_NOTE_NAME.sub(" ", title)).strip()
    return name[:120].rstrip() or "Untitled"


def wikilink(title: str) -> str:
    return f"[[{note_name(title)}]]"


def render_note(metadata: PaperMetadata, summary: PdfSummary | None = None) -> str:
    """Front matter (JSON strings are valid YAML scalars), then wikilinks to authors and references."""
    front = {
        "title": metadata.title,
        "id": metadata.id,
        "authors": metadata.authors,
        "year": metadata.year,
        "venue": metadata.venue,
        "citations": metadata.citation_count,
        "tags": ["paper"],
    }
    lines = ["---", *(f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in front.items()), "---", ""]
    lines += [f"# {metadata.title}", ""]
    if metadata.authors:
        lines += ["**Authors:** " + ", ".join(wikilink(author) for author in metadata.authors), ""]
    if metadata.abstract:
        lines += ["## Abstract", "", metadata.abstract, ""]
    if summary is not None and summary.summary:
        lines += ["## Summary", "", *(f"- {sentence}" for sentence in summary.summary), ""]
        lines += ["**Keywords:** " + ", ".join(f"#{word}" for word in summary.keywords), ""]
    if metadata.references:
        lines += ["## References", ""]
        for ref in metadata.references:
            year = f" ({ref.year})" if ref.year else ""
            lines.append(f"- {wikilink(ref.title or ref.id)}{year}")
        lines.append("")
    return "\n".join(lines)


def write_note(vault_dir: str | Path, metadata: PaperMetadata, summary: PdfSummary | None = None) -> Path:
    """Write the note under its title; replaced whole, so Obsidian never reads half a file."""
    vault = Path(vault_dir)
    vault.mkdir(parents=True, exist_ok=True)
    target = vault / f"{note_name(metadata.title)}.md"
    descriptor, temporary = tempfile.mkstemp(dir=vault, prefix=".note-", suffix=".md")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as output:
            output.write(render_note(metadata, summary))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
