"""delete_namespace: what a run that owns its namespace (demo, benchmarks, tests) leaves behind."""

from __future__ import annotations

import redis

from dramatiq_fairway.store import delete_namespace


def test_deleting_a_namespace_removes_its_state_and_queue_keys_and_nothing_else(
    state_client: redis.Redis, namespace: str
) -> None:
    neighbour = f"{namespace}x"
    owned = [f"{namespace}:job:{n}" for n in range(1200)] + [f"{{{namespace}:default}}.msgs"]
    kept = [f"{neighbour}:job:1", f"{{{neighbour}:default}}.msgs", f"other:{namespace}:job:1"]
    with state_client.pipeline(transaction=False) as pipe:
        for key in owned + kept:
            pipe.set(key, "1")
        pipe.execute()

    try:
        assert delete_namespace(state_client, namespace) == len(owned)
        assert state_client.exists(*owned) == 0
        assert state_client.exists(*kept) == len(kept)
    finally:
        state_client.delete(*kept)
