"""Key names of the domain actors' state in the state store (``actors/fl_state.py``, ``actors/papers_state.py``).

Keys that one MULTI touches together share a hash tag (``{<round>}``, ``{<crawl>}``) so that it
works on Redis Cluster.
"""

from __future__ import annotations


def fl_round_key(namespace: str, round_id: str) -> str:
    """Hash of one federated round: config, frozen participants, report. Its updates are ``<key>:updates``."""
    return f"{namespace}:fl:round:{{{round_id}}}"


def fl_epsilon_key(namespace: str, client_id: str) -> str:
    """Hash of the epsilon a federated client spent, per release id."""
    return f"{namespace}:fl:epsilon:{client_id}"


def fl_health_key(namespace: str, client_id: str) -> str:
    """Hash of a federated client's last health check."""
    return f"{namespace}:fl:health:{client_id}"


def papers_crawl_prefix(namespace: str, crawl_id: str) -> str:
    """Prefix of one citation crawl's keys (``:seen`` and ``:papers``)."""
    return f"{namespace}:papers:crawl:{{{crawl_id}}}"
