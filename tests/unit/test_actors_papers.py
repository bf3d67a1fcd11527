"""Paper actors without a broker: the offline corpus, priorities, the Semantic Scholar client against a
local HTTP server, a hand-made PDF summarised, Obsidian wikilinks. The crawl on real brokers is in
tests/actors/test_actors_papers.py."""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from dramatiq_fairway.actors import papers
from dramatiq_fairway.errors import PermanentError, RateLimited, TransientError
from dramatiq_fairway.priority import Priority

from ..support.helpers import free_port

TRANSFORMER = "arXiv:1706.03762"


CURRENT_YEAR = 2026


@pytest.fixture
def corpus() -> papers.OfflineCorpus:
    return papers.OfflineCorpus()


def test_shipped_corpus_is_complete_and_self_contained(corpus: papers.OfflineCorpus) -> None:
    assert len(corpus.records) >= 30
    for paper_id in corpus.records:
        paper = corpus.get(paper_id)
        assert paper.title
        assert paper.authors
        assert paper.year is not None
        assert paper.citation_count is not None
        assert paper.abstract
        for ref in paper.references:
            assert ref.id in corpus.records
            assert ref.title == corpus.records[ref.id]["title"]
    with pytest.raises(papers.PaperNotFound):
        corpus.get("arXiv:0000.00000")


@pytest.mark.parametrize(
    ("citations", "year", "expected"),
    [
        (120_000, 2017, Priority.HIGH),  # 12,000 a year
        (9_000, 2006, Priority.NORMAL),  # ~430 a year
        (1_100, 1996, Priority.LOW),  # ~35 a year
        (30, 2000, Priority.BATCH),
        (None, 2020, Priority.LOW),
        (5_000, None, Priority.LOW),
    ],
)
def test_priority_from_citations_per_year(citations: int | None, year: int | None, expected: Priority) -> None:
    assert papers.paper_priority(citations, year, CURRENT_YEAR) is expected


def test_a_recent_paper_outranks_an_older_one_with_more_citations() -> None:
    assert papers.paper_priority(9_000, 2024, CURRENT_YEAR) < papers.paper_priority(20_000, 1990, CURRENT_YEAR)


def test_crawl_options_follow_the_stack() -> None:
    child = papers.ChildFetch(id="x", depth=0, priority=Priority.NORMAL)

    class Stack:
        actor_options = {"priority_level", "breaker"}

    class Stock:
        actor_options = {"max_retries"}

    assert papers.crawl_options(Stack(), child, "semantic_scholar") == {  # type: ignore[arg-type]
        "priority_level": "NORMAL",
        "breaker": "semantic_scholar",
    }
    assert papers.crawl_options(Stack(), child, "corpus") == {"priority_level": "NORMAL"}  # type: ignore[arg-type]
    assert papers.crawl_options(Stock(), child, "semantic_scholar") == {}  # type: ignore[arg-type]


S2_PAPER = {
    "paperId": "204e3073870fae3d05bcbc2f6a8e263d9b72e776",
    "title": "Attention is All you Need",
    "authors": [{"authorId": "1", "name": "Ashish Vaswani"}, {"authorId": "2", "name": "Noam Shazeer"}],
    "year": 2017,
    "venue": "Neural Information Processing Systems",
    "citationCount": 120000,
    "abstract": "The dominant sequence transduction models are based on recurrent networks.",
    "references": [
        {"paperId": "a6cb366736791bcccc5c8639de5a8f9636bf87e8", "title": "Adam", "year": 2014, "citationCount": 1},
        {"paperId": None, "title": "An unresolved reference", "year": None, "citationCount": None},
    ],
}


class FakeSemanticScholar(BaseHTTPRequestHandler):
    requests: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        FakeSemanticScholar.requests.append((self.path, self.headers.get("x-api-key")))
        if self.path.startswith(f"/graph/v1/paper/{TRANSFORMER}?fields="):
            self._reply(200, json.dumps(S2_PAPER).encode())
        elif self.path.startswith("/graph/v1/paper/slow-down-seconds"):
            self._reply(429, b'{"message": "Too Many Requests"}', {"Retry-After": "7"})
        elif self.path.startswith("/graph/v1/paper/slow-down-date"):
            when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
            self._reply(429, b"{}", {"Retry-After": when})
        elif self.path.startswith("/graph/v1/paper/overloaded"):
            self._reply(503, b"{}")
        elif self.path.startswith("/graph/v1/paper/forbidden"):
            self._reply(403, b"{}")
        else:
            self._reply(404, b'{"error": "Paper not found"}')

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""


@pytest.fixture
def semantic_scholar() -> Iterator[papers.SemanticScholarSource]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSemanticScholar)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeSemanticScholar.requests = []
    source = papers.SemanticScholarSource(
        f"http://127.0.0.1:{server.server_address[1]}/graph/v1", api_key=SecretStr("s3cret-key"), timeout=5
    )
    yield source
    source.close()
    server.shutdown()
    server.server_close()
    thread.join()


def test_semantic_scholar_paper_is_parsed(semantic_scholar: papers.SemanticScholarSource) -> None:
    paper = semantic_scholar.get(TRANSFORMER)
    assert paper.id == TRANSFORMER
    assert paper.title == "Attention is All you Need"
    assert paper.authors == ["Ashish Vaswani", "Noam Shazeer"]
    assert paper.citation_count == 120000
    assert [ref.id for ref in paper.references] == ["a6cb366736791bcccc5c8639de5a8f9636bf87e8"]
    path, api_key = FakeSemanticScholar.requests[-1]
    assert "fields=title%2Cauthors" in path
    assert "references.citationCount" in path.replace("%2C", ",")
    assert api_key == "s3cret-key"


def test_http_429_becomes_rate_limited_with_retry_after(semantic_scholar: papers.SemanticScholarSource) -> None:
    with pytest.raises(RateLimited) as seconds:
        semantic_scholar.get("slow-down-seconds")
    assert seconds.value.retry_after == 7.0
    with pytest.raises(RateLimited) as date:
        semantic_scholar.get("slow-down-date")
    assert 100 < date.value.retry_after <= 120
    assert "s3cret-key" not in str(seconds.value) + str(date.value)


def test_http_errors_are_classified(semantic_scholar: papers.SemanticScholarSource) -> None:
    with pytest.raises(papers.PaperNotFound):
        semantic_scholar.get("nothing-here")
    with pytest.raises(TransientError, match="503"):
        semantic_scholar.get("overloaded")
    with pytest.raises(PermanentError, match="403"):
        semantic_scholar.get("forbidden")
    unreachable = papers.SemanticScholarSource(f"http://127.0.0.1:{free_port()}/graph/v1", timeout=2)
    with pytest.raises(TransientError, match="unreachable"):
        unreachable.get(TRANSFORMER)
    unreachable.close()


def test_retry_after_header_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert papers.retry_after_seconds("12", now) == 12.0
    assert papers.retry_after_seconds("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30.0
    assert papers.retry_after_seconds("Wed, 31 Dec 2025 23:00:00 GMT", now) == 0.0
    assert papers.retry_after_seconds(None, now) == papers.DEFAULT_RETRY_AFTER
    assert papers.retry_after_seconds("soon", now) == papers.DEFAULT_RETRY_AFTER


ARTICLE = [
    [
        "Federated learning trains a shared model across many devices without collecting their data.",
        "Each device trains the model on its local data and sends only a model update to the server.",
        "The weather in the lab was pleasant during the whole project.",
        "The server averages the model updates, weighting each device by its number of training examples.",
    ],
    [
        "Coffee was served at ten every morning.",
        "Devices whose data differ from the population make federated averaging converge more slowly.",
        "Differential privacy adds calibrated noise to each model update so that no single device can be identified.",
        "We thank the reviewers.",
    ],
]


def make_pdf(pages: list[list[str]], title: str) -> bytes:
    """A text PDF written object by object: catalog, page tree, Helvetica, one content stream per page."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    page_count = len(pages)
    kids = " ".join(f"{5 + 2 * i} 0 R" for i in range(page_count))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {page_count} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        f"<< /Title ({escape(title)}) /Producer (fairway tests) >>".encode(),
    ]
    for index, lines in enumerate(pages):
        stream = "BT /F1 10 Tf 14 TL 50 780 Td " + " ".join(f"({escape(line)}) Tj T*" for line in lines) + " ET"
        data = zlib.compress(stream.encode("latin-1"))
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {6 + 2 * index} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(data)} /Filter /FlateDecode >>\nstream\n".encode() + data + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 4 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


@pytest.fixture
def article_pdf(tmp_path: Path) -> Path:
    path = tmp_path / "article.pdf"
    path.write_bytes(make_pdf(ARTICLE, "Federated Averaging in Practice"))
    return path


def test_a_real_pdf_is_summarised(article_pdf: Path) -> None:
    result = papers.summarize_pdf.fn(str(article_pdf), 3)
    assert result["pages"] == 2
    assert result["title"] == "Federated Averaging in Practice"
    sentences = [line for page in ARTICLE for line in page]
    assert result["words"] == sum(len(line.split()) for line in sentences)
    summary = result["summary"]
    assert len(summary) == 3
    assert all(sentence in sentences for sentence in summary)
    assert summary == sorted(summary, key=sentences.index)  # document order
    assert not {"The weather in the lab was pleasant during the whole project.", "We thank the reviewers."} & set(
        summary
    )
    assert {"model", "federated"} <= set(result["keywords"])


def test_unreadable_pdfs_fail_permanently(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="no PDF"):
        papers.summarize(tmp_path / "missing.pdf")
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"%PDF-1.4 this is not really a pdf")
    with pytest.raises(PermanentError):
        papers.summarize(junk)
    blank = tmp_path / "blank.pdf"
    blank.write_bytes(make_pdf([[]], "Scanned"))
    with pytest.raises(PermanentError, match="no extractable text"):
        papers.summarize(blank)


def test_sentences_split_on_ends_and_join_hyphenated_words() -> None:
    text = "Models learn.\nThe fed-\neration averages them! Does it work? Yes, e.g. in 3 cases."
    assert papers.split_sentences(text) == [
        "Models learn.",
        "The federation averages them!",
        "Does it work?",
        "Yes, e.g. in 3 cases.",
    ]


def test_note_links_authors_and_references(corpus: papers.OfflineCorpus) -> None:
    note = papers.render_note(corpus.get(TRANSFORMER))
    front, body = note.split("---\n")[1], note.split("---\n", 2)[2]
    fields = {line.split(": ", 1)[0]: json.loads(line.split(": ", 1)[1]) for line in front.strip().splitlines()}
    assert fields["title"] == "Attention Is All You Need"
    assert fields["year"] == 2017
    assert fields["tags"] == ["paper"]
    assert "[[Ashish Vaswani]]" in body
    assert "- [[Adam A Method for Stochastic Optimization]] (2014)" in body
    assert "- [[Long Short-Term Memory]] (1997)" in body
    links = [line for line in body.splitlines() if line.startswith("- [[")]
    assert len(links) == len(corpus.records[TRANSFORMER]["references"])


def test_note_names_are_safe_for_obsidian() -> None:
    assert papers.note_name("BERT: Pre-training [v2] #1 / a|b?") == "BERT Pre-training v2 1 a b"
    assert papers.note_name("   ") == "Untitled"


def test_generate_markdown_writes_a_note_with_a_pdf_summary(tmp_path: Path, article_pdf: Path) -> None:
    path = Path(papers.generate_markdown.fn("arXiv:1602.05629", str(tmp_path / "vault"), "corpus", str(article_pdf)))
    assert path == tmp_path / "vault" / "Communication-Efficient Learning of Deep Networks from Decentralized Data.md"
    text = path.read_text(encoding="utf-8")
    assert "## Summary" in text
    assert "- [[Adam A Method for Stochastic Optimization]] (2014)" in text
    assert "#federated" in text
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
