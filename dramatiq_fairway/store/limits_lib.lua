-- Per-tenant limits, shared by the scripts that enforce them: fair_redis.lua (the Redis broker's
-- dispatch) and limits.lua (the consumer side, for RabbitMQ). limits.py prepends this file to
-- both, so the two read limits and keep token buckets the same way, and start the same way: the
-- replication mode and the call's clock (ARGV[2]). Otherwise it defines functions only.
--
-- Keys under a queue prefix P ("{<namespace>:<queue>}"):
--   P:limits         hash "<layer>|<tenant>" -> "cap|rate|burst"; layer "base" comes from the workers'
--                    Settings, layer "ops" from `fairway limits set`; tenant "" is the default
--   P:limits:version counter bumped on every change of a layer
--   P:limits:tokens  hash tenant -> "tokens|ms": the token bucket, as of ms
-- A field of a limit may be empty (not set here). Each field resolves on its own, first set wins:
-- ops|tenant, base|tenant, ops|, base|. A rate without a burst gets max(1, ceil(rate)).
-- Invariant: 0 <= tokens <= burst; tokens only grow with time, by rate per second.

-- Both scripts read TIME before writing, which Redis before 5 allows only with effects replication.
if redis.replicate_commands then
    redis.replicate_commands()
end

-- The call's clock in ms: arg, or the Redis server's TIME when arg is "" (tests pass a fixed clock).
local function call_now(arg)
    if arg ~= "" then
        return tonumber(arg)
    end
    local t = redis.call("TIME")
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function limits_parse(raw)
    if not raw then
        return {}
    end
    local cap, rate, burst = string.match(raw, "^([^|]*)|([^|]*)|([^|]*)$")
    return { tonumber(cap), tonumber(rate), tonumber(burst) }
end

-- At most this many limit fields are read at once per fetch; beyond, each tenant's are read alone.
local LIMITS_PRELOAD = 128

-- The limit of the four records {ops|tenant, base|tenant, ops|, base|} (raw values or false).
local function limits_resolve(raw)
    local records = { limits_parse(raw[1]), limits_parse(raw[2]), limits_parse(raw[3]), limits_parse(raw[4]) }
    local fields = {}
    for field = 1, 3 do
        for i = 1, 4 do
            if records[i][field] then
                fields[field] = records[i][field]
                break
            end
        end
    end
    local limit = { cap = fields[1], rate = fields[2], burst = fields[3] }
    if limit.rate and not limit.burst then
        limit.burst = math.max(1, math.ceil(limit.rate))
    end
    return limit
end

-- The limit of tenant on the queue at prefix P: {cap = n|nil, rate = r|nil, burst = b|nil}.
local function limits_of(P, tenant)
    return limits_resolve(redis.call("HMGET", P .. ":limits", "ops|" .. tenant, "base|" .. tenant, "ops|", "base|"))
end

-- For a call that looks up many tenants: nil when the queue at prefix P has no limits at all, else
-- a function tenant -> limit that reads P:limits once when it is small.
local function limits_reader(P)
    local key = P .. ":limits"
    local size = redis.call("HLEN", key)
    if size == 0 then
        return nil
    end
    if size > LIMITS_PRELOAD then
        return function(tenant)
            return limits_of(P, tenant)
        end
    end
    local all = {}
    local flat = redis.call("HGETALL", key)
    for i = 1, #flat, 2 do
        all[flat[i]] = flat[i + 1]
    end
    return function(tenant)
        return limits_resolve({
            all["ops|" .. tenant] or false,
            all["base|" .. tenant] or false,
            all["ops|"] or false,
            all["base|"] or false,
        })
    end
end

-- Take one token of tenant's bucket at now (ms). Returns 0 when taken (or the limit has no rate),
-- else the ms until a token is due; nothing is written then, so the bucket keeps refilling.
local function limits_take_token(P, tenant, limit, now)
    if not limit.rate then
        return 0
    end
    local key = P .. ":limits:tokens"
    local tokens = limit.burst
    local raw = redis.call("HGET", key, tenant)
    if raw then
        local stored, at = string.match(raw, "^(.-)|(.*)$")
        tokens = math.min(limit.burst, tonumber(stored) + math.max(0, now - tonumber(at)) * limit.rate / 1000)
    end
    if tokens < 1 then
        return math.max(1, math.ceil((1 - tokens) * 1000 / limit.rate))
    end
    redis.call("HSET", key, tenant, tostring(tokens - 1) .. "|" .. string.format("%.0f", now))
    return 0
end
