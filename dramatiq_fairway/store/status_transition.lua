-- Move one job to a new state and append it to the job's history, keeping the TTL the state asks for.
--
-- KEYS[1]  the job's hash: {namespace}:job:{message_id}
-- ARGV[1]  mode: "record" (always), "enqueue" (only when the job is unknown: a retry or a move out
--          of the delay queue must not turn RETRY back into PENDING), "start" (REVOKED instead of
--          STARTED when the cancel flag is set), "reject" (only when the job never started)
-- ARGV[2]  new state
-- ARGV[3]  time of the change, ISO 8601 UTC
-- ARGV[4]  TTL in seconds for the key after this change
-- ARGV[5]  actor name
-- ARGV[6]  queue name
-- ARGV[7]  most history entries kept (the oldest are dropped first)
--
-- Returns the job's state after the call. Invariant: `state` is always the last entry of `history`.
local key = KEYS[1]
local mode, state, at, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local current = redis.call('HGET', key, 'state')

if mode == 'enqueue' and current then
  return current
end
if mode == 'reject' and current and current ~= 'PENDING' then
  return current
end
if mode == 'start' and redis.call('HGET', key, 'cancel') == '1' then
  state = 'REVOKED'
end

local history = {}
local raw = redis.call('HGET', key, 'history')
if raw then
  history = cjson.decode(raw)
end
table.insert(history, {state = state, at = at})
local keep = tonumber(ARGV[7])
while #history > keep do
  table.remove(history, 1)
end

redis.call('HSET', key, 'state', state, 'actor', ARGV[5], 'queue', ARGV[6], 'history', cjson.encode(history))
redis.call('EXPIRE', key, ttl)
return state
