-- Move jobs through one or more states each, appending each state to the job's history, and keep
-- the TTL the job's last state asks for. Several states per job let a worker write a fast job's
-- STARTED and its outcome together; several jobs per call let it write a flush of many jobs with
-- one script call instead of one per job.
--
-- KEYS[k]  the k-th job's hash: {namespace}:job:{message_id}
-- ARGV[1]  TTL in seconds when a job's last state is SUCCESS
-- ARGV[2]  TTL in seconds after any other state
-- ARGV[3]  most history entries kept per job (the oldest are dropped first)
-- then one group per key, in KEYS order:
--   mode: "record" (always), "start" (REVOKED instead of the first state when the cancel flag
--         is set), "reject" (only when the job never started),
--         "revoke" (a worker skipping a cancelled job: not again when a bulk cancel already
--         revoked it, store/status_revoke.lua)
--   actor name
--   queue name
--   enqueue time, ISO 8601 UTC, or "": an unknown job gets a PENDING entry at that time first
--         (the producer's own PENDING, status_enqueue.lua, may arrive later, or never when its
--         write was dropped)
--   n, then n pairs of new state and time of the change (ISO 8601 UTC)
--
-- Returns each job's state after the call, in KEYS order. Invariant: a job's `state` is always the
-- last entry of its `history`; `enqueued` (ISO 8601 UTC) is the time of its first history entry
-- when that entry is PENDING.
local success_ttl, other_ttl, keep = ARGV[1], ARGV[2], tonumber(ARGV[3])

local function move(key, mode, actor, queue, enqueued_at, first, n)
    -- One read and one write per job: the hash's fields are read together and the new ones set
    -- together (a worker's outcome is the hot path).
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
    for i = first, first + 2 * (n - 1), 2 do
        state = ARGV[i]
        if i == first and mode == "start" and cancelled then
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
    redis.call("EXPIRE", key, state == "SUCCESS" and success_ttl or other_ttl)
    return state
end

local states = {}
local a = 4
for k = 1, #KEYS do
    local n = tonumber(ARGV[a + 4])
    states[k] = move(KEYS[k], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], a + 5, n)
    a = a + 5 + 2 * n
end
return states
