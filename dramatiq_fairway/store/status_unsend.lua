-- Take back the PENDING status a send wrote before its publish, when the publish failed for good
-- (FairRabbitmqBroker writes PENDING with its tenant-routing call, before it publishes).
--
-- KEYS[1]  the job's hash: {namespace}:job:{message_id}
-- ARGV[1]  the time of that PENDING entry (ISO 8601 UTC, as written)
--
-- Deletes the hash only when that send created it: its whole history is that one PENDING entry.
-- A job known before (a retry, a move out of the delay queue) is left alone. Returns 1 if deleted.
-- Invariant: no PENDING status is left for a message that was never queued.
local raw = redis.call("HGET", KEYS[1], "history")
if not raw then
    return 0
end
local history = cjson.decode(raw)
if #history == 1 and history[1].state == "PENDING" and history[1].at == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
