"""A federated round: five clients train on their own data, the server averages what they sent.

Run a worker, then the producer::

    dramatiq examples.fl_round
    python examples/fl_round.py

The round aggregates when every client reported, or at its deadline if a quorum did
(``FAIRWAY_ACTORS__FL_QUORUM``, 80 % by default): one client that fails cannot block it.
"""

from __future__ import annotations

import time
import uuid

# Sets up the broker from the FAIRWAY_* settings and declares every domain actor.
from dramatiq_fairway.actors import fl

CLIENTS = [f"hospital-{name}" for name in ("north", "south", "east", "west", "central")]


def main(timeout: float = 60.0) -> None:
    round_id = f"example-{uuid.uuid4().hex[:8]}"
    fl.start_federated_round(round_id, CLIENTS, seed=42, deadline_s=10, options={"tenant": "research"})
    print(f"round {round_id}: {len(CLIENTS)} clients training")
    deadline = time.monotonic() + timeout
    while (report := fl.round_report(round_id)) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"round {round_id} did not aggregate within {timeout:.0f}s; is a worker running?")
        time.sleep(0.2)
    print(f"aggregated {len(report.participants)} clients ({report.samples} samples), missing {report.missing}")
    print(
        f"held-out accuracy {report.global_accuracy:.3f} "
        f"(mean of the clients' own models: {report.mean_client_accuracy:.3f})"
    )


if __name__ == "__main__":
    main()
