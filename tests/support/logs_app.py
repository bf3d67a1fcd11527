"""A worker module for ``dramatiq tests.support.logs_app``: the fairway stack from FAIRWAY_* settings.

``FAIRWAY_TEST_QUEUE`` names the queue. ``chatty`` logs one line from inside the job.
"""

from __future__ import annotations

import logging
import os

import dramatiq

import dramatiq_fairway

broker = dramatiq_fairway.setup()


@dramatiq.actor(queue_name=os.environ["FAIRWAY_TEST_QUEUE"], max_retries=0)
def chatty(word: str) -> None:
    logging.getLogger("tests.support.logs_app").warning("said %s", word)
