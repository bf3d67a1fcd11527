"""What fairway does with a failure before anyone sees it.

- :mod:`.classify`: transient, permanent, rate-limited or unknown (the retry decision);
- :mod:`.backoff`: how long to wait before the next attempt;
- :mod:`.fingerprint`: which bug it is (dead letters are grouped by it);
- :mod:`.redaction` and :mod:`.redaction_rules`: the secrets taken out of it before it is stored or logged.
"""
