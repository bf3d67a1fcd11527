"""The operator API the CLI and the dashboard share: the only way they reach the brokers' servers.

- :mod:`.broker`: the broker they open from the settings;
- :mod:`.queues`: queue depths per queue, level and tenant;
- :mod:`.controls`: pause and resume a queue;
- :mod:`.summaries`: the dashboard's queue and worker listings;
- :mod:`.diagnostics`: what ``fairway check`` reports;
- :mod:`.durations`: durations as operators type them (``15m``, ``7d``);
- :mod:`.migrate`: adopting the queues stock Dramatiq left (``fairway migrate``);
- :mod:`.bulk_cancel`, :mod:`.bulk_dead_letters`: bulk actions by filter, each recorded in the audit stream.
"""
