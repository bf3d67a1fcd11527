"""Serving the dashboard with uvicorn, after the bind rule of :func:`.security.check_bind`."""

from __future__ import annotations

import logging

import uvicorn

from ..settings import Settings
from .app import create_app
from .security import check_bind

logger = logging.getLogger(__name__)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve the dashboard until interrupted; ``ConfigError`` for a non-loopback host without credentials."""
    host = host or settings.dashboard.host
    port = settings.dashboard.port if port is None else port
    check_bind(host, settings.dashboard)
    app = create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    logger.warning(
        "fairway dashboard on http://%s:%d/ (%s)",
        shown,
        port,
        "read-only" if settings.dashboard.read_only else "actions enabled",
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
