-- A send's PENDING status. Its own script, not a move of status_transition.lua: it runs on every
-- send, and the general script (reading the job, decoding and encoding its history) took 25 µs of
-- Redis time for it where this one takes 17 (docs/benchmarks.md, "Producer").
--
-- KEYS[1]  the job's hash: {namespace}:job:{message_id}
-- ARGV[1]  TTL in seconds (the TTL status_transition.lua gives a job whose last state is not SUCCESS)
-- ARGV[2]  actor name
-- ARGV[3]  queue name
-- ARGV[4]  the time of the send, ISO 8601 UTC
-- ARGV[5]  the history: a JSON list holding the one PENDING entry at ARGV[4] (built by the caller)
-- ARGV[6]  tenant, or "": with ARGV[7], the priority level (1-5) or "", kept as `tenant` and
--          `level`, what a bulk cancel selects queued jobs by (store/status_bulk.py)
--
-- Returns the job's state after the call. A job already known (a retry, a move out of the delay
-- queue, a worker that ran it before this write arrived) is left as it is: RETRY never turns back
-- into PENDING. Invariant (as status_transition.lua's): a job's `state` is the last entry of its
-- `history`; `enqueued` is the time of its first entry when that entry is PENDING.
local key = KEYS[1]
if redis.call("HSETNX", key, "state", "PENDING") == 0 then
    return redis.call("HGET", key, "state")
end
local fields = { "actor", ARGV[2], "queue", ARGV[3], "history", ARGV[5], "enqueued", ARGV[4] }
if ARGV[6] ~= "" then
    fields[9], fields[10], fields[11], fields[12] = "tenant", ARGV[6], "level", ARGV[7]
end
redis.call("HSET", key, unpack(fields))
redis.call("EXPIRE", key, ARGV[1])
return "PENDING"
