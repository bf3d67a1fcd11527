-- One circuit breaker's state machine, shared by every worker: closed -> open -> half_open -> closed
-- (resilience4j's count-based model), plus an operator's forced open. Runs on Redis 6.2 and 7.
--
-- KEYS[1]  {ns}:breaker:{key}         hash: state (closed|open|half_open), forced (0|1),
--                                     window (outcome letters of the last window_size calls),
--                                     trials (letters of this half-open round), openings (consecutive
--                                     openings, grows open_duration), opened_at, retry_at (ms)
-- KEYS[2]  {ns}:breaker:{key}:trials  zset: trial permit id -> expiry (ms) of the running half-open trials
-- Both names carry the same hash tag, {key}.
--
-- ARGV[1]  command: admit | record | force_open | close | reset
-- ARGV[2]  now in ms, or "" to use the server's clock (TIME), so every host shares one clock
-- ARGV[3]  idle TTL in ms: an unforced breaker nobody writes to is forgotten after it (plus any open time)
-- admit:   ARGV[4] permit id, ARGV[5] half_open_max_calls, ARGV[6] trial timeout ms
-- record:  ARGV[4] outcome letters, in order: s success, S slow success, f failure, F slow failure,
--          i ignored (frees a trial permit only), r rate limited (opens for ARGV[6] ms);
--          ARGV[5] permit id or "", ARGV[6] retry_after ms, ARGV[7] failure_rate_threshold,
--          ARGV[8] slow_call_rate_threshold, ARGV[9] minimum_calls, ARGV[10] window_size,
--          ARGV[11] open_duration ms, ARGV[12] open_duration_factor, ARGV[13] max_open_duration ms,
--          ARGV[14] half_open_max_calls
--
-- Reply: {state, forced, window, trials, openings, opened_at, retry_at, previous state or "" when
-- the state did not change, created (1 when this call created the hash), allowed (admit: 1 = run)}.
--
-- Invariants: at most half_open_max_calls unexpired permits exist, and only in half_open; a forced
-- breaker stays open (and never expires) until close or reset; outcomes reach the window only while
-- closed, and a half-open round counts only the outcomes of its own permits; every call changes
-- the state at most once. The mirror in Python is MemoryBreakerStore: change both together.

local hash, permits = KEYS[1], KEYS[2]
local command = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local idle_ttl = tonumber(ARGV[3])

local existed = redis.call('EXISTS', hash) == 1
local b = {state = 'closed', forced = '0', window = '', trials = '', openings = 0, opened_at = 0, retry_at = 0}
if existed then
  local raw = redis.call('HGETALL', hash)
  for i = 1, #raw, 2 do
    b[raw[i]] = raw[i + 1]
  end
  b.openings = tonumber(b.openings)
  b.opened_at = tonumber(b.opened_at)
  b.retry_at = tonumber(b.retry_at)
end
local previous = b.state
local changed = false
local allowed = 0

local function count(letters, pattern)
  local _, n = string.gsub(letters, pattern, '')
  return n
end

local function rate_exceeded(letters, failure_threshold, slow_threshold)
  local calls = #letters
  return count(letters, '[fF]') / calls >= failure_threshold or count(letters, '[SF]') / calls >= slow_threshold
end

local function open_for(duration)
  b.state = 'open'
  b.opened_at = now
  b.retry_at = now + duration
  b.trials = ''
  redis.call('DEL', permits)
  changed = true
end

local function open_grown(base, factor, cap)
  local duration = math.floor(math.min(base * factor ^ b.openings, cap))
  b.openings = b.openings + 1
  open_for(duration)
end

local function close()
  b.state = 'closed'
  b.forced = '0'
  b.window = ''
  b.trials = ''
  b.openings = 0
  b.opened_at = 0
  b.retry_at = 0
  redis.call('DEL', permits)
  changed = true
end

if command == 'admit' then
  local permit, max_trials, trial_timeout = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
  if b.forced == '1' then
    allowed = 0
  elseif b.state == 'closed' then
    allowed = 1
  else
    if b.state == 'open' and now >= b.retry_at then
      b.state = 'half_open'
      b.trials = ''
      redis.call('DEL', permits)
      changed = true
    end
    if b.state == 'half_open' then
      redis.call('ZREMRANGEBYSCORE', permits, '-inf', now)
      if redis.call('ZSCORE', permits, permit) then
        allowed = 1
      elseif redis.call('ZCARD', permits) < max_trials then
        redis.call('ZADD', permits, now + trial_timeout, permit)
        redis.call('PEXPIRE', permits, trial_timeout)
        allowed = 1
      end
    end
  end
elseif command == 'record' then
  local outcomes, permit, retry_after = ARGV[4], ARGV[5], tonumber(ARGV[6])
  local failure_threshold, slow_threshold = tonumber(ARGV[7]), tonumber(ARGV[8])
  local minimum_calls, window_size = tonumber(ARGV[9]), tonumber(ARGV[10])
  local base, factor, cap, max_trials = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
  local trial = permit ~= '' and redis.call('ZREM', permits, permit) == 1
  for i = 1, #outcomes do
    local letter = string.sub(outcomes, i, i)
    if b.forced == '1' or letter == 'i' then
      -- a forced breaker ignores outcomes; an ignored outcome only frees its permit (above)
    elseif letter == 'r' then
      if b.state ~= 'open' then
        open_for(retry_after)
      elseif now + retry_after > b.retry_at then
        b.retry_at = now + retry_after
        changed = true
      end
    elseif b.state == 'closed' then
      b.window = string.sub(b.window .. letter, -window_size)
      changed = true
      if #b.window >= math.min(minimum_calls, window_size)
        and rate_exceeded(b.window, failure_threshold, slow_threshold) then
        open_grown(base, factor, cap)
      end
    elseif b.state == 'half_open' and trial and i == #outcomes then
      b.trials = b.trials .. letter
      changed = true
      if #b.trials >= max_trials then
        if rate_exceeded(b.trials, failure_threshold, slow_threshold) then
          b.window = b.trials
          open_grown(base, factor, cap)
        else
          close()
        end
      end
    end
  end
elseif command == 'force_open' then
  b.forced = '1'
  open_for(0)
  b.retry_at = 0
elseif command == 'close' then
  if existed then
    close()
  end
elseif command == 'reset' then
  redis.call('DEL', hash, permits)
  return {'closed', '0', '', '', 0, 0, 0, existed and previous ~= 'closed' and previous or '', 0, 0}
else
  return redis.error_reply('unknown breaker command ' .. tostring(command))
end

if changed then
  redis.call('HSET', hash, 'state', b.state, 'forced', b.forced, 'window', b.window, 'trials', b.trials,
    'openings', string.format('%d', b.openings), 'opened_at', string.format('%d', b.opened_at),
    'retry_at', string.format('%d', b.retry_at))
  if b.forced == '1' then
    redis.call('PERSIST', hash)
  else
    redis.call('PEXPIRE', hash, idle_ttl + math.max(0, b.retry_at - now))
  end
end

local created = 0
if changed and not existed then
  created = 1
end
if b.state == previous then
  previous = ''
end
return {b.state, b.forced, b.window, b.trials, b.openings, b.opened_at, b.retry_at, previous, created, allowed}
