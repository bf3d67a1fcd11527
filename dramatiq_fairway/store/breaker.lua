-- One circuit breaker's state machine, shared by every worker: closed -> open -> half_open -> closed
-- (resilience4j's model, count- or time-based window), plus an operator's forced open. Runs on
-- Redis 6.2 and 7.
--
-- KEYS[1]  {ns}:breaker:{key}         hash: state (closed|open|half_open), forced (0|1),
--                                     window: a count window is the outcome letters of the last
--                                     window_size calls; a time window is "second:calls:failures:slow"
--                                     buckets joined by ",", oldest first, of the last window_size seconds,
--                                     trials (letters of this half-open round), openings (consecutive
--                                     openings, grows open_duration), opened_at, retry_at (ms),
--                                     version (+1 on every write: replies are ordered by it)
-- KEYS[2]  {ns}:breaker:{key}:trials  zset: the permits of this half-open round, id -> expiry (ms) of a
--                                     running trial, or +inf once it reported (it keeps its slot)
-- Both names carry the same hash tag, {key}.
--
-- ARGV[1]  command: admit | record | force_open | close | reset
-- ARGV[2]  now in ms, or "" to use the server's clock (TIME), so every host shares one clock
-- ARGV[3]  idle TTL in ms: an unforced breaker nobody writes to is forgotten after it (plus any open time)
-- admit:   ARGV[4] permit id, ARGV[5] half_open_max_calls, ARGV[6] trial timeout ms
-- record:  ARGV[4] outcome letters, in order: s success, S slow success, f failure, F slow failure,
--          i ignored (frees a trial's slot for another trial), r rate limited (opens for ARGV[6] ms);
--          ARGV[5] permit id or "", ARGV[6] retry_after ms, ARGV[7] failure_rate_threshold,
--          ARGV[8] slow_call_rate_threshold, ARGV[9] minimum_calls, ARGV[10] window type (count|time),
--          ARGV[11] window size (calls for count, seconds for time), ARGV[12] open_duration ms,
--          ARGV[13] open_duration_factor, ARGV[14] max_open_duration ms, ARGV[15] half_open_max_calls
--
-- Reply: {state, forced, window, trials, openings, opened_at, retry_at, previous state or "" when
-- the state did not change, created (1 when this call created the hash), allowed (admit: 1 = run),
-- version (of the hash after this call, 0 when there is none)}.
--
-- Invariants: at most half_open_max_calls unexpired permits exist, and only in half_open, so a round
-- runs at most half_open_max_calls trials that count (plus replacements of trials that were ignored
-- or never reported within the trial timeout); a permit counts one outcome, once; a forced
-- breaker stays open (and never expires) until close or reset; outcomes reach the window only while
-- closed, and a half-open round counts only the outcomes of its own permits; every call changes
-- the state at most once; a window in the other type's format (the policy changed) starts afresh.
-- The mirror in Python is MemoryBreakerStore: change both together.

local hash, permits = KEYS[1], KEYS[2]
local command = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
    local time = redis.call("TIME")
    now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local idle_ttl = tonumber(ARGV[3])

local existed = redis.call("EXISTS", hash) == 1
local b = {
    state = "closed",
    forced = "0",
    window = "",
    trials = "",
    openings = 0,
    opened_at = 0,
    retry_at = 0,
    version = 0,
}
if existed then
    local raw = redis.call("HGETALL", hash)
    for i = 1, #raw, 2 do
        b[raw[i]] = raw[i + 1]
    end
    b.openings = tonumber(b.openings)
    b.opened_at = tonumber(b.opened_at)
    b.retry_at = tonumber(b.retry_at)
    b.version = tonumber(b.version) or 0
end
local previous = b.state
local changed = false
local allowed = 0

local function count(letters, pattern)
    local _, n = string.gsub(letters, pattern, "")
    return n
end

-- calls, failures, slow calls of outcome letters
local function tally(letters)
    return #letters, count(letters, "[fF]"), count(letters, "[SF]")
end

local function rate_exceeded(calls, failures, slow, failure_threshold, slow_threshold)
    return failures / calls >= failure_threshold or slow / calls >= slow_threshold
end

-- The time window's buckets {second, calls, failures, slow}, oldest first, without those older than
-- duration seconds before now; a count window (no ':') starts afresh.
local function parse_buckets(window, duration)
    local buckets = {}
    local oldest = math.floor(now / 1000) - duration
    for second, calls, failures, slow in string.gmatch(window, "(%d+):(%d+):(%d+):(%d+)") do
        if tonumber(second) > oldest then
            buckets[#buckets + 1] = { tonumber(second), tonumber(calls), tonumber(failures), tonumber(slow) }
        end
    end
    return buckets
end

local function format_bucket(second, calls, failures, slow)
    return string.format("%d:%d:%d:%d", second, calls, failures, slow)
end

local function format_buckets(buckets)
    local parts = {}
    for i, bucket in ipairs(buckets) do
        parts[i] = format_bucket(bucket[1], bucket[2], bucket[3], bucket[4])
    end
    return table.concat(parts, ",")
end

local function open_for(duration)
    b.state = "open"
    b.opened_at = now
    b.retry_at = now + duration
    b.trials = ""
    redis.call("DEL", permits)
    changed = true
end

local function open_grown(base, factor, cap)
    local duration = math.floor(math.min(base * factor ^ b.openings, cap))
    b.openings = b.openings + 1
    open_for(duration)
end

local function close()
    b.state = "closed"
    b.forced = "0"
    b.window = ""
    b.trials = ""
    b.openings = 0
    b.opened_at = 0
    b.retry_at = 0
    redis.call("DEL", permits)
    changed = true
end

if command == "admit" then
    local permit, max_trials, trial_timeout = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
    if b.forced == "1" then
        allowed = 0
    elseif b.state == "closed" then
        allowed = 1
    else
        if b.state == "open" and now >= b.retry_at then
            b.state = "half_open"
            b.trials = ""
            redis.call("DEL", permits)
            changed = true
        end
        if b.state == "half_open" then
            redis.call("ZREMRANGEBYSCORE", permits, "-inf", now)
            local score = redis.call("ZSCORE", permits, permit)
            if score then
                -- a redelivered trial keeps its slot; a retry of one that reported waits for the next round
                if score ~= "inf" then
                    allowed = 1
                end
            elseif redis.call("ZCARD", permits) < max_trials then
                redis.call("ZADD", permits, now + trial_timeout, permit)
                redis.call("PEXPIRE", permits, trial_timeout)
                allowed = 1
            end
        end
    end
elseif command == "record" then
    local outcomes, permit, retry_after = ARGV[4], ARGV[5], tonumber(ARGV[6])
    local failure_threshold, slow_threshold = tonumber(ARGV[7]), tonumber(ARGV[8])
    local minimum_calls, window_type, window_size = tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11])
    local base, factor, cap, max_trials = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
    local trial = false
    if permit ~= "" then
        local score = redis.call("ZSCORE", permits, permit)
        if score and score ~= "inf" then
            trial = true
            if string.sub(outcomes, -1) == "i" then
                redis.call("ZREM", permits, permit)
            else
                redis.call("ZADD", permits, "+inf", permit)
            end
        end
    end
    -- The window is parsed once per call; buckets is nil for a count window.
    local buckets
    if window_type == "time" then
        buckets = parse_buckets(b.window, window_size)
    elseif string.find(b.window, ":", 1, true) then
        b.window = ""
    end
    for i = 1, #outcomes do
        local letter = string.sub(outcomes, i, i)
        if b.forced == "1" or letter == "i" then
        -- a forced breaker ignores outcomes; an ignored trial only frees its slot (above)
        elseif letter == "r" then
            if b.state ~= "open" then
                open_for(retry_after)
            elseif now + retry_after > b.retry_at then
                b.retry_at = now + retry_after
                changed = true
            end
        elseif b.state == "closed" then
            local calls, failures, slow, minimum
            if buckets then
                local second = math.floor(now / 1000)
                if #buckets == 0 or buckets[#buckets][1] < second then
                    buckets[#buckets + 1] = { second, 0, 0, 0 }
                end
                local current = buckets[#buckets]
                current[2] = current[2] + 1
                current[3] = current[3] + count(letter, "[fF]")
                current[4] = current[4] + count(letter, "[SF]")
                b.window = format_buckets(buckets)
                calls, failures, slow = 0, 0, 0
                for _, bucket in ipairs(buckets) do
                    calls, failures, slow = calls + bucket[2], failures + bucket[3], slow + bucket[4]
                end
                minimum = minimum_calls
            else
                b.window = string.sub(b.window .. letter, -window_size)
                calls, failures, slow = tally(b.window)
                minimum = math.min(minimum_calls, window_size)
            end
            changed = true
            if calls >= minimum and rate_exceeded(calls, failures, slow, failure_threshold, slow_threshold) then
                open_grown(base, factor, cap)
            end
        elseif b.state == "half_open" and trial and i == #outcomes then
            b.trials = b.trials .. letter
            changed = true
            if #b.trials >= max_trials then
                local calls, failures, slow = tally(b.trials)
                if rate_exceeded(calls, failures, slow, failure_threshold, slow_threshold) then
                    -- The failed round is what an operator sees of the window while it is open.
                    if buckets then
                        b.window = format_bucket(math.floor(now / 1000), calls, failures, slow)
                    else
                        b.window = b.trials
                    end
                    open_grown(base, factor, cap)
                else
                    close()
                end
            end
        end
    end
elseif command == "force_open" then
    b.forced = "1"
    open_for(0)
    b.retry_at = 0
elseif command == "close" then
    if existed then
        close()
    end
elseif command == "reset" then
    redis.call("DEL", hash, permits)
    return { "closed", "0", "", "", 0, 0, 0, existed and previous ~= "closed" and previous or "", 0, 0, 0 }
else
    return redis.error_reply("unknown breaker command " .. tostring(command))
end

if changed then
    b.version = b.version + 1
    redis.call(
        "HSET",
        hash,
        "state",
        b.state,
        "forced",
        b.forced,
        "window",
        b.window,
        "trials",
        b.trials,
        "openings",
        string.format("%d", b.openings),
        "opened_at",
        string.format("%d", b.opened_at),
        "retry_at",
        string.format("%d", b.retry_at),
        "version",
        string.format("%d", b.version)
    )
    if b.forced == "1" then
        redis.call("PERSIST", hash)
    else
        redis.call("PEXPIRE", hash, idle_ttl + math.max(0, b.retry_at - now))
    end
end

local created = 0
if changed and not existed then
    created = 1
end
if b.state == previous then
    previous = ""
end
return {
    b.state,
    b.forced,
    b.window,
    b.trials,
    b.openings,
    b.opened_at,
    b.retry_at,
    previous,
    created,
    allowed,
    b.version,
}
