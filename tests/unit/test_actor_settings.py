"""``FAIRWAY_ACTORS__*``: the domain actors' settings, their bad values, and the API key kept secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from dramatiq_fairway.actors.settings import ActorSettings, load_actor_settings
from dramatiq_fairway.errors import ConfigError
from dramatiq_fairway.settings import Settings, load_settings


def test_actor_defaults() -> None:
    actors = ActorSettings()
    assert actors.fl_quorum == 0.8
    assert actors.fl_round_deadline == 120
    assert actors.papers_source == "corpus"
    assert actors.semantic_scholar_url == "https://api.semanticscholar.org/graph/v1"
    assert actors.semantic_scholar_api_key is None


def test_actor_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_ACTORS__FL_QUORUM", "0.6")
    monkeypatch.setenv("FAIRWAY_ACTORS__FL_ROUND_DEADLINE", "30")
    monkeypatch.setenv("FAIRWAY_ACTORS__PAPERS_SOURCE", "semantic_scholar")
    monkeypatch.setenv("FAIRWAY_ACTORS__SEMANTIC_SCHOLAR_URL", "http://127.0.0.1:8000/graph/v1")
    monkeypatch.setenv("FAIRWAY_ACTORS__SEMANTIC_SCHOLAR_API_KEY", "s2-secret-key")
    actors = load_actor_settings()
    assert (actors.fl_quorum, actors.fl_round_deadline, actors.papers_source) == (0.6, 30, "semantic_scholar")
    assert actors.semantic_scholar_url == "http://127.0.0.1:8000/graph/v1"
    assert actors.semantic_scholar_api_key is not None
    assert actors.semantic_scholar_api_key.get_secret_value() == "s2-secret-key"


def test_the_api_key_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_ACTORS__SEMANTIC_SCHOLAR_API_KEY", "s2-secret-key")
    actors = load_actor_settings()
    assert "s2-secret-key" not in repr(actors)
    assert "s2-secret-key" not in str(actors.model_dump(mode="json"))
    assert "s2-secret-key" not in str(load_settings().masked())


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FL_QUORUM", "0", "FAIRWAY_ACTORS__FL_QUORUM: '0' input should be greater than 0"),
        ("FL_QUORUM", "1.5", "FAIRWAY_ACTORS__FL_QUORUM: '1.5' input should be less than or equal to 1"),
        ("FL_ROUND_DEADLINE", "-5", "FAIRWAY_ACTORS__FL_ROUND_DEADLINE: '-5'"),
        ("PAPERS_SOURCE", "arxiv", "FAIRWAY_ACTORS__PAPERS_SOURCE: 'arxiv' is not one of corpus, semantic_scholar"),
        ("SEMANTIC_SCHOLAR_URL", "ftp://x", "FAIRWAY_ACTORS__SEMANTIC_SCHOLAR_URL: 'ftp://x' must start with http://"),
    ],
)
def test_bad_actor_settings_name_the_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"FAIRWAY_ACTORS__{name}", value)
    with pytest.raises(ConfigError) as error:
        load_actor_settings()
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_core_settings_know_nothing_of_the_actors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIRWAY_ACTORS__FL_QUORUM", "1.5")
    assert "actors" not in Settings.model_fields
    assert load_settings().namespace  # a bad actor setting is the actors' error, not the stack's


def test_actor_settings_from_the_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "fairway.toml"
    config.write_text('namespace = "from-file"\n[actors]\nfl_quorum = 0.5\npapers_source = "semantic_scholar"\n')
    monkeypatch.setenv("FAIRWAY_CONFIG", str(config))
    monkeypatch.setenv("FAIRWAY_ACTORS__FL_QUORUM", "0.7")
    actors = load_actor_settings()
    assert (actors.fl_quorum, actors.papers_source) == (0.7, "semantic_scholar")  # the environment wins
    assert load_settings().namespace == "from-file"


def test_a_config_file_without_actors_leaves_the_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "fairway.toml"
    config.write_text('namespace = "from-file"\n')
    monkeypatch.setenv("FAIRWAY_CONFIG", str(config))
    assert load_actor_settings().fl_quorum == 0.8
