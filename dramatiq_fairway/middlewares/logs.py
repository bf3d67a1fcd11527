"""JobLogContext: JSON log lines (``FAIRWAY_LOGS__FORMAT=json``) that name the job they came from.

Around each job it sets the fields of :func:`dramatiq_fairway.middlewares.json_logs.job_fields` (message id, actor,
queue, tenant, attempt) for :class:`~dramatiq_fairway.middlewares.json_logs.JsonLogFormatter`, which it installs
on the root logger's handlers when a worker process boots (the ``dramatiq`` command's processes)
or when an in-process worker starts. With the text format it only keeps the fields (a context
variable set and reset per job), so a user's own formatter or filter may read them.

When a worker starts it also filters two lines of Dramatiq's worker threads that report nothing
wrong on the fairway stack (:class:`~dramatiq_fairway.middlewares.json_logs.WorkerLineFilter`).
"""

from __future__ import annotations

from typing import Any

from dramatiq import Broker, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.errors import ActorNotFound

from ..settings import Settings, load_settings
from .json_logs import current_job, filter_worker_lines, job_fields, use_json_logs


class JobLogContext(Middleware):
    """Gives log lines logged during a job the job's fields; installs JSON logs when configured."""

    def __init__(self, *, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()

    def after_process_boot(self, broker: Broker) -> None:
        if self.settings.logs.format == "json":
            use_json_logs()

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        self.after_process_boot(broker)
        filter_worker_lines(lambda actor_name: _is_shipped(broker, actor_name))

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        current_job.set(job_fields(message))

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        current_job.set(None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self.after_process_message(broker, message)


def _is_shipped(broker: Broker, actor_name: str) -> bool:
    """Whether ``actor_name`` is one of the domain actors in :mod:`dramatiq_fairway.actors`."""
    try:
        module = broker.get_actor(actor_name).fn.__module__
    except ActorNotFound:
        return False
    return module.startswith("dramatiq_fairway.actors.")
