"""The domain actors' settings, ``FAIRWAY_ACTORS__*`` (and the ``[actors]`` table of ``FAIRWAY_CONFIG``).

Kept beside the actors rather than in the core :class:`~dramatiq_fairway.settings.Settings`, which
configures the middleware and brokers and knows nothing of these actors; read with the same
sources and the same one-line errors (``dramatiq_fairway/settings.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from ..settings import ENV_PREFIX, ConfiguredSettings, read_settings, url_with_scheme

ENV_PREFIX_ACTORS = f"{ENV_PREFIX}ACTORS__"


class ActorSettings(ConfiguredSettings):
    """The domain actors (``dramatiq_fairway.actors``): ``FAIRWAY_ACTORS__*``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX_ACTORS)
    config_table = "actors"

    # A federated round aggregates once every client reported, or once ``fl_round_deadline``
    # seconds passed with at least this share of its clients.
    fl_quorum: float = Field(0.8, gt=0, le=1)
    fl_round_deadline: float = Field(120, gt=0)
    papers_source: Literal["corpus", "semantic_scholar"] = "corpus"
    semantic_scholar_url: str = "https://api.semanticscholar.org/graph/v1"
    semantic_scholar_api_key: SecretStr | None = None

    @field_validator("semantic_scholar_url")
    @classmethod
    def _http_scheme(cls, url: str) -> str:
        return url_with_scheme(url, ("http", "https"))


def load_actor_settings(**overrides: object) -> ActorSettings:
    """Read the actors' settings; any invalid value is a one-line :class:`~dramatiq_fairway.errors.ConfigError`."""
    return read_settings(ActorSettings, ENV_PREFIX_ACTORS, **overrides)
