-- Move one job through one or more states, appending each state to the job's history, and keep
-- the TTL the job's last state asks for. Several states let a worker write a fast job's STARTED and
-- its outcome together. One job per call: job keys hash anywhere, and a call touches one hash slot
-- (a worker's flush sends its jobs' calls in one pipeline instead).
--
-- KEYS[1]  the job's hash: {namespace}:job:{message_id}
-- ARGV[1]  TTL in seconds when the job's last state is SUCCESS
-- ARGV[2]  TTL in seconds after any other state
-- ARGV[3]  most history entries kept (the oldest are dropped first)
-- ARGV[4]  mode: "record" (always), "start" (REVOKED instead of the first state when the cancel
--          flag is set), "reject" (only when the job never started), "revoke" (a worker skipping a
--          cancelled job: not again when a bulk cancel already revoked it, store/status_revoke.lua)
-- ARGV[5]  actor name
-- ARGV[6]  queue name
-- ARGV[7]  enqueue time, ISO 8601 UTC, or "": an unknown job gets a PENDING entry at that time first
--          (the producer's own PENDING, status_enqueue.lua, may arrive later, or never when its
--          write was dropped)
-- ARGV[8]  n, then n pairs of new state and time of the change (ISO 8601 UTC)
--
-- Returns the job's state after the call. Invariant: a job's `state` is always the last entry of
-- its `history`; `enqueued` (ISO 8601 UTC) is the time of its first history entry when that entry
-- is PENDING.
local key, keep, mode, actor, queue, enqueued_at = KEYS[1], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local last = 9 + 2 * (tonumber(ARGV[8]) - 1)

-- One read and one write: the hash's fields are read together and the new ones set together (a
-- worker's outcome is the hot path).
local stored = redis.call("HMGET", key, "state", "history", "cancel")
local current, raw, cancelled = stored[1], stored[2], stored[3] == "1"
if mode == "reject" and current and current ~= "PENDING" then
    return current
end
if mode == "revoke" and current == "REVOKED" then
    return current
end

local fields = {}
local history = {}
if raw then
    history = cjson.decode(raw)
elseif enqueued_at ~= "" then
    table.insert(history, { state = "PENDING", at = enqueued_at })
    table.insert(fields, "enqueued")
    table.insert(fields, enqueued_at)
end

local state
for i = 9, last, 2 do
    state = ARGV[i]
    if i == 9 and mode == "start" and cancelled then
        state = "REVOKED"
        table.insert(history, { state = state, at = ARGV[i + 1] })
        break
    end
    table.insert(history, { state = state, at = ARGV[i + 1] })
end
while #history > keep do
    table.remove(history, 1)
end

redis.call(
    "HSET",
    key,
    "state",
    state,
    "actor",
    actor,
    "queue",
    queue,
    "history",
    cjson.encode(history),
    unpack(fields)
)
redis.call("EXPIRE", key, state == "SUCCESS" and ARGV[1] or ARGV[2])
return state
