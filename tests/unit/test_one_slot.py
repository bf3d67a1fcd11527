"""The suite's check that a script call touches one hash slot (tests/support/one_slot.py) refuses a
call across slots before anything is sent, as Redis Cluster would, and lets one-slot calls through."""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import RedisClusterException

from dramatiq_fairway.redis_cluster import slot_of
from dramatiq_fairway.store import scripts

from ..support.one_slot import one_slot_per_script_call

SHA = "0" * 40


def test_keys_of_one_hash_tag_share_a_slot_and_others_do_not() -> None:
    assert slot_of("{fw:q}:ready") == slot_of("{fw:q}:tenants") == slot_of(b"{fw:q}")
    assert slot_of("fw:job:a") != slot_of("fw:job:b")


def test_a_script_call_across_slots_is_refused_before_it_is_sent() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)  # nothing listens there
    with pytest.MonkeyPatch.context() as patch, one_slot_per_script_call(patch) as refused:
        with pytest.raises(RedisClusterException, match="CROSSSLOT"):
            client.evalsha(SHA, 2, "fw:job:a", "fw:job:b", "arg")
        with pytest.raises(RedisClusterException, match="CROSSSLOT"):
            client.pipeline(transaction=False).evalsha(SHA, 2, "{fw:q}:x", "{fw:other}:x")
        # store/scripts.py's one-write batches are packed by hiredis directly, or by the connection
        # for arguments hiredis refuses.
        crossing = [("EVALSHA", SHA, 2, "fw:job:a", "fw:job:b")]
        with pytest.raises(RedisClusterException, match="CROSSSLOT"):
            scripts._packed(client.connection_pool.make_connection(), crossing)
        with pytest.raises(RedisClusterException, match="CROSSSLOT"):
            client.connection_pool.make_connection().pack_commands(crossing)
        # One slot passes the check and goes on to the (absent) server.
        with pytest.raises(redis.ConnectionError):
            client.evalsha(SHA, 2, "{fw:q}:x", "{fw:q}:y")
    assert len(refused) == 4
    assert "2 slots" in refused[0]
