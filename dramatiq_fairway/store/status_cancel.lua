-- Ask for a job to be cancelled: set its cancel flag unless it already finished.
--
-- KEYS[1]  the job's hash: {namespace}:job:{message_id}
--
-- Returns the job's state (the flag is set only when that state is PENDING, STARTED or RETRY), or
-- false when the job is unknown. Workers read the flag when the job starts and while it runs.
local state = redis.call("HGET", KEYS[1], "state")
if not state then
    return false
end
if state == "PENDING" or state == "STARTED" or state == "RETRY" then
    redis.call("HSET", KEYS[1], "cancel", "1")
end
return state
