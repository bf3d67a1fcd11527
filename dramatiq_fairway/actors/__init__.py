"""The domain actors: ``dramatiq dramatiq_fairway.actors`` runs them, ``periodiq dramatiq_fairway.actors``
schedules the periodic ones.

The broker is the one already set up in this process (an application that called
``dramatiq_fairway.setup()`` first), else ``setup()`` from the ``FAIRWAY_*`` settings.
"""

from __future__ import annotations

import dramatiq
from periodiq import PeriodiqMiddleware

from ..setup import setup

if dramatiq.broker.global_broker is None:
    setup(middleware=[PeriodiqMiddleware()])
elif not any(isinstance(m, PeriodiqMiddleware) for m in dramatiq.get_broker().middleware):
    dramatiq.get_broker().add_middleware(PeriodiqMiddleware())

# Imported last: the actors bind to the global broker when they are declared.
from . import fl, maintenance, papers, photos

__all__ = ["fl", "maintenance", "papers", "photos"]
