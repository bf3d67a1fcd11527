"""``fairway demo`` and the quickstart: apps built on the package, which nothing else imports.

- :mod:`.run`: ``fairway demo`` itself (starts a worker on :mod:`.app`, sends jobs, summarises);
- :mod:`.app`: the demo's worker module; :mod:`.ledger`: what its workers record for the summary;
- :mod:`.scholar`: the Semantic Scholar stand-in the citation crawl talks to;
- :mod:`.quickstart`: the quickstart app; :mod:`.prime_tally`: its side-effect-free arithmetic.

Nothing is imported here: the worker module must not pull in the demo's driver, nor the other way.
"""
