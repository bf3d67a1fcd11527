"""JSON log lines that carry the job they were logged from (``FAIRWAY_LOGS__FORMAT=json``).

One JSON object per line: ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``process``,
``thread``, ``message``, ``exception`` (formatted traceback, when there is one) and, for a line
logged while a worker runs a job (in the actor, or by a middleware for it), ``message_id``,
``actor``, ``queue``, ``tenant`` and ``attempt`` (1 for the first run). The job's fields come
from a context variable that :class:`~dramatiq_fairway.middlewares.logs.JobLogContext` sets
around each job, so they reach ``async def`` actors too (through ``ContextAsyncIO``).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from dramatiq import Message
from dramatiq.broker import MessageProxy

from ..errors import Cancelled
from ..tenants import tenant_of

current_job: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("fairway_log_job", default=None)


def job_fields(message: Message[Any] | MessageProxy) -> dict[str, Any]:
    """The fields a log line about ``message`` carries."""
    return {
        "message_id": message.message_id,
        "actor": message.actor_name,
        "queue": message.queue_name,
        "tenant": tenant_of(message.options),
        "attempt": message.options.get("retries", 0) + 1,
    }


class JsonLogFormatter(logging.Formatter):
    """Formats a record as one JSON object, with the fields of the job being run, if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        job = current_job.get()
        if job is not None:
            line.update(job)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            # Set without exc_info by a filter that scrubbed the traceback (MessageLogRedaction).
            line["exception"] = record.exc_text
        return json.dumps(line, default=str)


def use_json_logs(logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (the root logger by default) the JSON formatter."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(JsonLogFormatter())


# The logger of Dramatiq's worker threads (``dramatiq.logging.get_logger`` names it module.class).
WORKER_THREAD_LOGGER = "dramatiq.worker.WorkerThread"
# Dramatiq formats this warning eagerly, so the actor's name is only in the text.
_RESULT_DISCARDED = re.compile(r"Actor '(?P<actor>.+?)' returned a value that is not None")


class WorkerLineFilter(logging.Filter):
    """Drops two lines Dramatiq's worker threads log that are not something wrong on the fairway stack.

    - A job ended by :class:`~dramatiq_fairway.errors.Cancelled` (``fairway jobs cancel``): Dramatiq
      logs it as an unhandled exception, at ERROR with a traceback, though the cancel was asked
      for; the retry middleware logs the job's end instead, one line at INFO.
    - "returned a value ... without the Results middleware" for the actors ``quiet_results``
      accepts (the shipped domain actors, whose return values are there for applications that add
      Results or pipe them): it would fire on every job of the demo. Other actors still warn.
    """

    def __init__(self, quiet_results: Callable[[str], bool]) -> None:
        super().__init__()
        self.quiet_results = quiet_results

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None and isinstance(record.exc_info[1], Cancelled):
            return False
        if record.levelno == logging.WARNING and (found := _RESULT_DISCARDED.match(str(record.msg))):
            return not self.quiet_results(found["actor"])
        return True


def filter_worker_lines(quiet_results: Callable[[str], bool]) -> None:
    """Put a :class:`WorkerLineFilter` on Dramatiq's worker-thread logger, replacing an earlier one."""
    logger = logging.getLogger(WORKER_THREAD_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, WorkerLineFilter)]:
        logger.removeFilter(old)
    logger.addFilter(WorkerLineFilter(quiet_results))
