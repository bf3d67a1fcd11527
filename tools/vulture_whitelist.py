# Names vulture (`tox -e lint`) would report as unused although something calls or reads them by
# reflection. This file is never imported: vulture only reads the names. pyproject.toml's
# [tool.vulture] skips the broad families (Dramatiq's before_*/after_* hooks, pydantic validators
# and model_config, pytest fixtures); what is listed here is one of a kind, with the reason.
# ruff: noqa
# mypy: ignore-errors

# Dramatiq's Broker API, called by Dramatiq's Worker and by users.
_.consumer_class
_.consume
# RabbitmqBroker._ensure_queue declares a canonical queue through it (FairRabbitmqBroker overrides it).
_._declare_queue

# Dramatiq's master reads every middleware's forks (the metrics exporter process).
_.forks

# Named on the `dramatiq` command line (module:function) by the chaos tests.
worker_app

# pika reads the connection parameters' attributes.
_.ssl_options

# http.server calls these on the request handler (the demo's Semantic Scholar stand-in, test servers).
_.do_GET
_.log_message
_.daemon_threads

# uvicorn's Server is stopped by setting this attribute (tests/support/dashboard_support.py).
_.should_exit

# pydantic-settings calls this classmethod with every source by keyword; fairway uses two of them.
_.settings_customise_sources
dotenv_settings
file_secret_settings

# Fields read by serialisation (model_dump, --json output, Jinja templates), not by attribute access.
global_loss  # actors/fl.py RoundReport, stored and shown by the federated round's report
wait_p95  # dashboard/history_view.py Figures, read by templates/overview_live.html
wait_avg_s, wait_max_s, jobs_sent, jobs_finished, priority_levels  # demo/run.py --json summary
fl_round, photos_exported, papers_fetched, notes_written  # demo/run.py --json summary
in_flight_cap  # ops/queues.py, a column of `fairway queues --json`

# Test functions that take a fixture for its side effect only, and actors whose signature is the
# point of the test (redaction binds arguments to parameter names).
actor_state
cli_env
api_token
tokens


# Protocols that name the optional hooks the fair brokers call by name (brokers/hooks.py hooks_of):
# a middleware offers the method and the broker finds it; nothing annotates with the Protocol.
_.HoldingMiddleware
_.StartHoldingMiddleware
_.RejectionRecorder
_.hold_at_start
_.record_rejected

# Dramatiq's EventLoopThread method, overridden (middlewares/asyncio.py).
_.run_coroutine

# Dramatiq passes on_failure callbacks (message_data, exception_data) positionally.
exception_data

# pytest reads a report's longrepr (tests/conftest.py turns a skip in CI into a failure).
_.longrepr

# Read by templates/overview_live.html (selectattr), not by attribute access in Python.
_.metrics_unreadable

# _RabbitmqConsumer.nack calls _nack, overridden by FairPickingConsumer (brokers/rabbitmq_consumer.py).
_._nack

# pika's connection counters, kept up to date by brokers/rabbitmq_consumer.py _write_now when it
# writes acks past pika's buffer; pika's heartbeat checker reads them.
_.bytes_sent
_.frames_sent
