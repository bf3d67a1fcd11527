-- Revoke one queued job (a bulk cancel): mark it REVOKED with its cancel flag set, unless it left
-- the queue meanwhile. A worker that takes it later skips it (the id is also in the cancelled
-- stream, which store/status_bulk.py appends to after this call).
--
-- KEYS[1]  the job's hash: {namespace}:job:{message_id}
-- ARGV[1]  the time of the change, ISO 8601 UTC
-- ARGV[2]  TTL in seconds (the failed-state TTL: a cancelled job stays visible as long)
-- ARGV[3]  most history entries kept (the oldest are dropped first)
--
-- Returns 1 when the job was revoked, 0 when it is unknown or no longer PENDING or RETRY (it
-- started, finished or was revoked already). Invariant, as status_transition.lua keeps it: the
-- job's `state` is the last entry of its `history`.
local state = redis.call("HGET", KEYS[1], "state")
if state ~= "PENDING" and state ~= "RETRY" then
    return 0
end
local history = {}
local raw = redis.call("HGET", KEYS[1], "history")
if raw then
    history = cjson.decode(raw)
end
table.insert(history, { state = "REVOKED", at = ARGV[1] })
while #history > tonumber(ARGV[3]) do
    table.remove(history, 1)
end
redis.call("HSET", KEYS[1], "state", "REVOKED", "cancel", "1", "history", cjson.encode(history))
redis.call("EXPIRE", KEYS[1], ARGV[2])
return 1
