"""Paper actors: the offline corpus, a crawl bounded by depth and ordered by priority, the Semantic
Scholar client against a local HTTP server, a hand-made PDF summarised, Obsidian wikilinks."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import dramatiq
import pytest
import redis
from dramatiq import Broker, Message, Worker
from dramatiq.brokers.stub import StubBroker

from dramatiq_fairway.actors import papers
from dramatiq_fairway.actors.state_store import state_store
from dramatiq_fairway.demo.scholar import ScholarStandIn
from dramatiq_fairway.errors import PermanentError
from dramatiq_fairway.failures.classify import qualified_name
from dramatiq_fairway.priority import Priority
from dramatiq_fairway.store.breakers import RedisBreakerStore

from ..conftest import REDIS_URL
from ..support.helpers import wait_for
from ..unit import test_actors_papers as unit_papers
from ..unit.test_actors_papers import CURRENT_YEAR, TRANSFORMER

# pytest finds a fixture by module attribute: the crawl tests below share the unit tests' corpus.
corpus = unit_papers.corpus

GPT3 = "arXiv:2005.14165"


@pytest.fixture
def actor_state(monkeypatch: pytest.MonkeyPatch, namespace: str, state_client: redis.Redis) -> Iterator[None]:
    monkeypatch.setenv("FAIRWAY_BROKER", "redis")
    monkeypatch.setenv("FAIRWAY_STATE_URL", REDIS_URL)
    monkeypatch.setenv("FAIRWAY_NAMESPACE", namespace)
    state_store.cache_clear()
    yield
    state_store.cache_clear()


def within(corpus: papers.OfflineCorpus, root: str, depth: int) -> set[str]:
    """Every paper at most ``depth`` reference hops from ``root``, by breadth-first search."""
    found, frontier = {root}, {root}
    for _ in range(depth):
        frontier = {ref for paper in frontier for ref in corpus.records[paper]["references"]} - found
        found |= frontier
    return found


# --- Crawl --------------------------------------------------------------------------------------


def test_crawl_step_claims_references_once_most_urgent_first(
    corpus: papers.OfflineCorpus, state_client: redis.Redis, namespace: str
) -> None:
    store = papers.CrawlStore(state_client, namespace, "c1")
    metadata, children = papers.crawl_step(corpus, store, TRANSFORMER, 2, CURRENT_YEAR)
    assert metadata.title == "Attention Is All You Need"
    assert {child.id for child in children} == set(corpus.records[TRANSFORMER]["references"])
    assert all(child.depth == 1 for child in children)
    priorities = [child.priority for child in children]
    assert priorities == sorted(priorities)
    assert children[0].id == "arXiv:1512.03385"  # ResNet: the most cited per year among them
    assert (children[-1].id, children[-1].priority) == ("arXiv:1207.0580", Priority.NORMAL)  # dropout: 600 a year
    for child in children:
        ref = corpus.get(child.id)
        assert child.priority is papers.paper_priority(ref.citation_count, ref.year, CURRENT_YEAR)
    # BERT cites the Transformer's references too: only the ones not yet claimed come back.
    _, from_bert = papers.crawl_step(corpus, store, "arXiv:1810.04805", 1, CURRENT_YEAR)
    assert {child.id for child in from_bert}.isdisjoint(child.id for child in children)
    assert set(store.papers()) == {TRANSFORMER, "arXiv:1810.04805"}


def test_crawl_reaches_exactly_the_papers_within_depth(
    corpus: papers.OfflineCorpus, state_client: redis.Redis, namespace: str
) -> None:
    for depth in range(papers.MAX_DEPTH + 1):
        store = papers.CrawlStore(state_client, namespace, f"depth-{depth}")
        store.claim([GPT3])
        pending = [papers.ChildFetch(id=GPT3, depth=depth, priority=Priority.HIGH)]
        fetched: list[str] = []
        while pending:
            step = pending.pop(0)
            _, children = papers.crawl_step(corpus, store, step.id, step.depth, CURRENT_YEAR)
            fetched.append(step.id)
            pending += children
        assert len(fetched) == len(set(fetched))  # nothing fetched twice
        assert set(fetched) == within(corpus, GPT3, depth)


def test_crawl_refuses_depth_beyond_the_maximum(
    corpus: papers.OfflineCorpus, state_client: redis.Redis, namespace: str
) -> None:
    store = papers.CrawlStore(state_client, namespace, "too-deep")
    with pytest.raises(PermanentError, match="depth"):
        papers.crawl_step(corpus, store, GPT3, papers.MAX_DEPTH + 1, CURRENT_YEAR)


def test_fetch_actor_records_the_paper_in_its_crawl(
    actor_state: None, state_client: redis.Redis, namespace: str
) -> None:
    result = papers.fetch_paper_metadata.fn(TRANSFORMER, 0, "crawl-a")
    assert result["crawl_id"] == "crawl-a"
    assert result["title"] == "Attention Is All You Need"
    stored = papers.CrawlStore(state_client, namespace, "crawl-a").papers()
    assert stored[TRANSFORMER].year == 2017
    with pytest.raises(PermanentError, match="unknown metadata source"):
        papers.fetch_paper_metadata.fn(TRANSFORMER, 0, "crawl-a", "library-card")


def test_recursive_crawl_runs_on_the_broker(
    broker: Broker, queue_name: str, namespace: str, state_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    corpus = papers.OfflineCorpus()
    store = papers.CrawlStore(state_client, namespace, "e2e")

    @dramatiq.actor(broker=broker, queue_name=queue_name)
    def fetch(paper_id: str, depth: int) -> None:
        _, children = papers.crawl_step(corpus, store, paper_id, depth, CURRENT_YEAR)
        for child in children:
            fetch.send_with_options(
                args=(child.id, child.depth), **papers.crawl_options(broker, child, papers.OfflineCorpus.name)
            )

    store.claim([TRANSFORMER])
    fetch.send(TRANSFORMER, 2)
    start_worker(threads=4)
    expected = within(corpus, TRANSFORMER, 2)
    wait_for(lambda: len(store.papers()) == len(expected), timeout=20)
    broker.join(queue_name, timeout=10_000)
    assert set(store.papers()) == expected
    assert len(expected) < len(corpus.records)  # depth really bounded the crawl


# --- The source the settings choose, and the breaker in front of it ------------------------------


def test_the_papers_source_comes_from_the_settings(
    actor_state: None, monkeypatch: pytest.MonkeyPatch, namespace: str, state_client: redis.Redis
) -> None:
    stand_in = ScholarStandIn().start()
    monkeypatch.setenv("FAIRWAY_ACTORS__PAPERS_SOURCE", "semantic_scholar")
    monkeypatch.setenv("FAIRWAY_ACTORS__SEMANTIC_SCHOLAR_URL", stand_in.url)
    papers.source_named.cache_clear()
    try:
        result = papers.fetch_paper_metadata.fn(GPT3, 1, "crawl-s2")
    finally:
        papers.source_named.cache_clear()
        stand_in.stop()
    assert result["title"] == papers.OfflineCorpus().get(GPT3).title
    assert stand_in.answers == {200: 1}
    # The references go on to be fetched from the same source the settings chose.
    stub = papers.fetch_paper_metadata.broker
    assert isinstance(stub, StubBroker)
    sent = []
    while not stub.queues[papers.QUEUE].empty():
        sent.append(Message.decode(stub.queues[papers.QUEUE].get_nowait()))
    children = [message for message in sent if message.args[2] == "crawl-s2"]
    assert {message.args[0] for message in children} == set(papers.OfflineCorpus().records[GPT3]["references"])
    assert {message.args[3] for message in children} == {"semantic_scholar"}


def test_a_429_opens_the_semantic_scholar_breaker_for_its_retry_after(
    broker: Broker, queue_name: str, namespace: str, state_client: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    stand_in = ScholarStandIn().start()
    stand_in.rate_limit(100, 30)
    source = papers.SemanticScholarSource(stand_in.url, timeout=5)

    @dramatiq.actor(broker=broker, queue_name=queue_name, breaker=papers.SEMANTIC_SCHOLAR_BREAKER, max_retries=0)
    def fetch(paper_id: str) -> None:
        source.get(paper_id)

    try:
        fetch.send(TRANSFORMER)
        start_worker()
        store = RedisBreakerStore(state_client, namespace)
        state = wait_for(
            lambda: (found := store.get(papers.SEMANTIC_SCHOLAR_BREAKER)) and found.state == "open" and found
        )
    finally:
        source.close()
        stand_in.stop()
    assert stand_in.answers == {429: 1}
    assert state.opened_at is not None
    assert state.retry_at is not None
    assert state.retry_at - state.opened_at == pytest.approx(30, abs=1)


def test_split_modules_keep_the_error_name_and_keys(namespace: str, state_client: redis.Redis) -> None:
    # Dead letters and retry rules name errors by module path; crawls already in Redis keep their keys.
    assert qualified_name(papers.PaperNotFound) == "dramatiq_fairway.actors.papers.PaperNotFound"
    store = papers.CrawlStore(state_client, namespace, "c1")
    prefix = f"{namespace}:papers:crawl:{{c1}}"
    assert (store.seen_key, store.papers_key) == (f"{prefix}:seen", f"{prefix}:papers")
