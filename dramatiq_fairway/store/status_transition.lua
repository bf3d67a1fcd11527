-- Move one job through one or more states, appending each to the job's history, and keep the TTL
-- the last state asks for. Several states in one call let a worker write a fast job's STARTED and
-- its outcome together.
--
-- KEYS[1]  the job's hash: {namespace}:job:{message_id}
-- ARGV[1]  mode: "record" (always), "enqueue" (only when the job is unknown: a retry or a move out
--          of the delay queue must not turn RETRY back into PENDING), "start" (REVOKED instead of
--          the first state when the cancel flag is set), "reject" (only when the job never started)
-- ARGV[2]  TTL in seconds when the last state is SUCCESS
-- ARGV[3]  TTL in seconds after any other state
-- ARGV[4]  actor name
-- ARGV[5]  queue name
-- ARGV[6]  most history entries kept (the oldest are dropped first)
-- ARGV[7]  enqueue time, ISO 8601 UTC, or "": an unknown job gets a PENDING entry at that time first
--          (the producer's own PENDING may arrive later, or never when its write was dropped)
-- ARGV[8], ARGV[9], ...  pairs of new state and time of the change (ISO 8601 UTC)
--
-- Returns the job's state after the call. Invariant: `state` is always the last entry of `history`.
local key = KEYS[1]
local mode = ARGV[1]
local current = redis.call('HGET', key, 'state')

if mode == 'enqueue' and current then
  return current
end
if mode == 'reject' and current and current ~= 'PENDING' then
  return current
end

local history = {}
local raw = redis.call('HGET', key, 'history')
if raw then
  history = cjson.decode(raw)
elseif ARGV[7] ~= '' and mode ~= 'enqueue' then
  table.insert(history, {state = 'PENDING', at = ARGV[7]})
end

local state
for i = 8, #ARGV, 2 do
  state = ARGV[i]
  if i == 8 and mode == 'start' and redis.call('HGET', key, 'cancel') == '1' then
    state = 'REVOKED'
    table.insert(history, {state = state, at = ARGV[i + 1]})
    break
  end
  table.insert(history, {state = state, at = ARGV[i + 1]})
end
local keep = tonumber(ARGV[6])
while #history > keep do
  table.remove(history, 1)
end

redis.call('HSET', key, 'state', state, 'actor', ARGV[4], 'queue', ARGV[5], 'history', cjson.encode(history))
redis.call('EXPIRE', key, state == 'SUCCESS' and ARGV[2] or ARGV[3])
return state
