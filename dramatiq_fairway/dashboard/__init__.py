"""The web dashboard (``fairway dashboard``, extra ``dashboard``): an operator UI over the CLI's Python API.

See :mod:`dramatiq_fairway.dashboard.app` for the pages and :mod:`.security` for what guards them.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
