-- `DeadLetterStore.stats`: per value of a dimension, its count, first and last failure and its
-- trend counters, read from the indexes and day counters that dead_letters.lua keeps.
--
-- KEYS[1]  <prefix>keys:<dim>, the values of the dimension scored by their latest failed_at (ms);
--          every other key read is <prefix>..., under the same hash tag (one cluster slot).
-- ARGV[1]  prefix (ends with ":")
-- ARGV[2]  dimension name (queue, actor, error_type, fingerprint, tenant, reason)
-- ARGV[3]  low: failed_at (ms) from which records count, or "-inf" for all of them
-- ARGV[4]  counter width in milliseconds (a divisor of a day)
-- Returns  a flat array, 6 items per value with a record at or after low:
--          value, count, first failed_at (ms), last failed_at (ms), first day (epoch day number),
--          the counters of that day and each following one up to the last record's, concatenated:
--          one big-endian uint32 per counter, zeros for a day without counters.
--
-- Read-only. The counters go back as one string per value, not one reply element per counter: a
-- week of hourly trends for a thousand values is 168,000 counters, and parsing a reply element in
-- Python costs microseconds, far more than Redis spends on it.

local keys_key = KEYS[1]
local prefix, dim, low = ARGV[1], ARGV[2], ARGV[3]
local counter_ms = tonumber(ARGV[4])
local DAY_MS = 86400000
local zero_day = string.rep("\0", 4 * DAY_MS / counter_ms)

local function day_of(ms)
    return math.floor(ms / DAY_MS)
end

local function days(trend, first_day, last_day)
    local fields = {}
    for day = first_day, last_day do
        fields[#fields + 1] = string.format("%d", day)
    end
    local counters = redis.call("HMGET", trend, unpack(fields))
    for i = 1, #fields do
        counters[i] = counters[i] or zero_day
    end
    return table.concat(counters)
end

local reply = {}
for _, value in ipairs(redis.call("ZRANGEBYSCORE", keys_key, low, "+inf")) do
    local index = prefix .. "idx:" .. dim .. ":" .. value
    local count = redis.call("ZCOUNT", index, low, "+inf")
    if count > 0 then
        local first = redis.call("ZRANGEBYSCORE", index, low, "+inf", "WITHSCORES", "LIMIT", 0, 1)[2]
        local last = redis.call("ZRANGE", index, -1, -1, "WITHSCORES")[2]
        -- The counter holding low is read whole (it may be on the day before the first record
        -- counted), but no day before the value's oldest record: the read is bounded by what is
        -- stored, however long ago low is.
        local first_day = day_of(tonumber(first))
        if low ~= "-inf" then
            local oldest = redis.call("ZRANGE", index, 0, 0, "WITHSCORES")[2]
            first_day = math.max(day_of(tonumber(low)), day_of(tonumber(oldest)))
        end
        local n = #reply
        reply[n + 1] = value
        reply[n + 2] = count
        reply[n + 3] = first
        reply[n + 4] = last
        reply[n + 5] = first_day
        reply[n + 6] = days(prefix .. "trend:" .. dim .. ":" .. value, first_day, day_of(tonumber(last)))
    end
end
return reply
