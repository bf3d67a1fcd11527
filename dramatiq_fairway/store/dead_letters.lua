-- Every write to the dead-letter store, so that a record and its indexes never disagree.
--
-- KEYS[1]  the store's time index (<prefix>time); every other key is <prefix>..., and <prefix>
--          carries the store's hash tag, so all keys of one call live in one cluster slot.
-- ARGV[1]  command: "add" or "remove"
-- ARGV[2]  prefix (ends with ":")
-- ARGV[3]  trend counter width in milliseconds (a divisor of a day)
--
-- add:    ARGV[4] max records, ARGV[5] id, ARGV[6] failed_at (ms), ARGV[7] record JSON,
--         ARGV[8..] dimension name, value pairs (queue, actor, ...; empty values left out).
--         Returns {1 if the record is new else 0, number of oldest records evicted}.
--         A record that exists is left untouched: writing the same message id twice is a no-op.
-- remove: ARGV[4..] ids. Returns the number of records removed.
-- rewrite: ARGV[4..] id, record JSON pairs: replaces the data of records that exist (their
--         index values and time are unchanged: only args, kwargs and options are re-sealed).
--         Returns the number of records rewritten; a record removed meanwhile stays removed.
--
-- Invariant: for every record <prefix>rec:<id> (hash: data, at, dim:<name>) the id is in
-- <prefix>time and in <prefix>idx:<name>:<value> for each of its dimensions, with score = at;
-- <prefix>trend:<name>:<value> counts exactly the records of that value per counter (hash: epoch
-- day -> one big-endian uint32 per counter of that day, so that a week of hourly counters is one
-- read of 8 fields; a day whose counters are all 0 is deleted); <prefix>keys:<name> holds every
-- value with at least one record.

local time_key = KEYS[1]
local command = ARGV[1]
local prefix = ARGV[2]
local counter_ms = tonumber(ARGV[3])

local DAY_MS = 86400000
local zero_day = string.rep("\0", 4 * DAY_MS / counter_ms)

-- Add delta to the trend counter of a record failed at ``at`` (ms).
local function count(trend, at, delta)
    local day = string.format("%d", math.floor(at / DAY_MS))
    local offset = 4 * math.floor((at % DAY_MS) / counter_ms)
    local counters = redis.call("HGET", trend, day) or zero_day
    local n = math.max(struct.unpack(">I4", counters, offset + 1) + delta, 0)
    counters = string.sub(counters, 1, offset) .. struct.pack(">I4", n) .. string.sub(counters, offset + 5)
    if counters == zero_day then
        redis.call("HDEL", trend, day)
    else
        redis.call("HSET", trend, day, counters)
    end
end

local function remove_one(id)
    local record = prefix .. "rec:" .. id
    local fields = redis.call("HGETALL", record)
    redis.call("ZREM", time_key, id)
    if #fields == 0 then
        return 0
    end
    local at = 0
    local dims = {}
    for i = 1, #fields, 2 do
        local name = fields[i]
        if name == "at" then
            at = tonumber(fields[i + 1])
        elseif string.sub(name, 1, 4) == "dim:" then
            dims[string.sub(name, 5)] = fields[i + 1]
        end
    end
    for dim, value in pairs(dims) do
        local index = prefix .. "idx:" .. dim .. ":" .. value
        local trend = prefix .. "trend:" .. dim .. ":" .. value
        redis.call("ZREM", index, id)
        if redis.call("ZCARD", index) == 0 then
            redis.call("ZREM", prefix .. "keys:" .. dim, value)
            redis.call("DEL", trend)
        else
            count(trend, at, -1)
        end
    end
    redis.call("DEL", record)
    return 1
end

if command == "add" then
    local max_records = tonumber(ARGV[4])
    local id = ARGV[5]
    local at = tonumber(ARGV[6])
    local record = prefix .. "rec:" .. id
    if redis.call("EXISTS", record) == 1 then
        return { 0, 0 }
    end
    local fields = { "data", ARGV[7], "at", ARGV[6] }
    for i = 8, #ARGV, 2 do
        local dim, value = ARGV[i], ARGV[i + 1]
        fields[#fields + 1] = "dim:" .. dim
        fields[#fields + 1] = value
        redis.call("ZADD", prefix .. "idx:" .. dim .. ":" .. value, at, id)
        count(prefix .. "trend:" .. dim .. ":" .. value, at, 1)
        redis.call("ZADD", prefix .. "keys:" .. dim, "GT", at, value)
    end
    redis.call("HSET", record, unpack(fields))
    redis.call("ZADD", time_key, at, id)
    local evicted = 0
    local excess = redis.call("ZCARD", time_key) - max_records
    if excess > 0 then
        for _, old in ipairs(redis.call("ZRANGE", time_key, 0, excess - 1)) do
            evicted = evicted + remove_one(old)
        end
    end
    return { 1, evicted }
end

if command == "remove" then
    local removed = 0
    for i = 4, #ARGV do
        removed = removed + remove_one(ARGV[i])
    end
    return removed
end

if command == "rewrite" then
    local rewritten = 0
    for i = 4, #ARGV, 2 do
        local record = prefix .. "rec:" .. ARGV[i]
        if redis.call("EXISTS", record) == 1 then
            redis.call("HSET", record, "data", ARGV[i + 1])
            rewritten = rewritten + 1
        end
    end
    return rewritten
end

return redis.error_reply("dead_letters.lua: unknown command " .. tostring(command))
