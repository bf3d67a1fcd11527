"""The worker module of ``fairway demo``: ``dramatiq dramatiq_fairway.demo.app``.

All the domain actors on the fairway stack, with the demo's ledger (:mod:`.ledger`) recording
every finished job and every breaker transition for the demo's summary.
"""

from __future__ import annotations

import logging

from periodiq import PeriodiqMiddleware

from ..settings import load_settings
from ..setup import setup
from .ledger import BreakerTransitions, DemoLedger

settings = load_settings()
broker = setup(settings, middleware=[PeriodiqMiddleware(), DemoLedger(settings)])
# The breaker store logs every transition with the states as ``extra`` fields.
_breaker_logger = logging.getLogger("dramatiq_fairway.store.breakers")
_breaker_logger.addHandler(BreakerTransitions(settings))
_breaker_logger.setLevel(logging.INFO)

# Imported last: the actors bind to the broker set up above.
from ..actors import fl, papers, photos  # noqa: E402

__all__ = ["broker", "fl", "papers", "photos"]
