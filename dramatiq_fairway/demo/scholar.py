"""A stand-in for the Semantic Scholar Graph API on 127.0.0.1, serving the offline corpus.

``fairway demo`` points the paper actors at it (``FAIRWAY_ACTORS__SEMANTIC_SCHOLAR_URL``) so that
the real HTTP client, the ``semantic_scholar`` breaker and the retry classification all run
without the network. It can be told to fail: an outage answers 503 to everything (transient
failures that trip the breaker), and a rate limit answers 429 with ``Retry-After`` to the next few
requests.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from ..actors.papers import OfflineCorpus

API_PREFIX = "/graph/v1/paper/"


class ScholarStandIn:
    """The stand-in server; ``start()`` it, read ``url``, ``stop()`` it."""

    def __init__(self, corpus: OfflineCorpus | None = None) -> None:
        self.corpus = corpus or OfflineCorpus()
        self.answers: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._outage = False
        self._rate_limited = 0
        self._retry_after = 1.0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="scholar-stand-in", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/graph/v1"

    def start(self) -> ScholarStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def outage(self, down: bool) -> None:
        """Answer 503 to every request (``True``) or serve again (``False``)."""
        with self._lock:
            self._outage = down

    @property
    def down(self) -> bool:
        return self._outage

    def rate_limit(self, requests: int, retry_after: float) -> None:
        """Answer 429 with ``Retry-After: retry_after`` to the next ``requests`` requests."""
        with self._lock:
            self._rate_limited = requests
            self._retry_after = retry_after

    def reply(self, path: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        """(status, headers, body) for a GET of ``path``; counts every answer by status."""
        with self._lock:
            if self._outage:
                status, headers, body = 503, {}, {"message": "Service Unavailable"}
            elif self._rate_limited > 0:
                self._rate_limited -= 1
                status, headers, body = 429, {"Retry-After": f"{self._retry_after:g}"}, {"message": "Too Many Requests"}
            else:
                status, headers, body = self._paper(path)
            self.answers[status] += 1
        return status, headers, body

    def _paper(self, path: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        route = urlsplit(path).path
        record = (
            self.corpus.records.get(unquote(route.removeprefix(API_PREFIX))) if route.startswith(API_PREFIX) else None
        )
        if record is None:
            return 404, {}, {"error": "Paper not found"}
        references = [self.corpus.records.get(ref, {"id": ref}) for ref in record.get("references", [])]
        return (
            200,
            {},
            {
                "paperId": record["id"],
                "title": record["title"],
                "authors": [{"name": name} for name in record.get("authors", [])],
                "year": record.get("year"),
                "venue": record.get("venue"),
                "citationCount": record.get("citation_count"),
                "abstract": record.get("abstract"),
                "references": [
                    {
                        "paperId": ref["id"],
                        "title": ref.get("title"),
                        "year": ref.get("year"),
                        "citationCount": ref.get("citation_count"),
                    }
                    for ref in references
                ],
            },
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, headers, body = stand_in.reply(self.path)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the demo shows what matters in its summary."""

        return Handler
