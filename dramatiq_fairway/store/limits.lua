-- Per-tenant limits outside the Redis broker's dispatch: what `fairway limits` reads, and the
-- consumer-side enforcement used with RabbitMQ (limits.py prepends limits_lib.lua).
--
-- KEYS[1]  queue prefix P "{<namespace>:<queue>}" (every key touched starts with it)
-- ARGV[1]  command: replace describe acquire release renew in_flight
-- ARGV[2]  now in ms, or "" for the Redis server's TIME
-- ARGV[3…] command arguments, described at each command.
--
-- Keys besides those of limits_lib.lua:
--   P:limits:running:T  zset lease id -> ms it expires: the jobs of tenant T running under a
--                       consumer-side limit (RabbitMQ). A killed worker stops renewing its
--                       leases, so its slots come back when they expire.
--   P:limits:running    set of the tenants that may have leases (pruned by in_flight)
--   P:limits:generation the generation of the operator's changes the "ops" layer was built from
-- Invariant: a lease counts against its tenant's cap from acquire until release or expiry.

local P = KEYS[1]
local command = ARGV[1]
local now = call_now(ARGV[2])

local function running_key(tenant)
    return P .. ":limits:running:" .. tenant
end

local function running(tenant)
    local key = running_key(tenant)
    redis.call("ZREMRANGEBYSCORE", key, "-inf", string.format("%.0f", now))
    return redis.call("ZCARD", key)
end

-- replace: ARGV[3] layer ("base" or "ops"), ARGV[4] the generation of the operator's changes an
-- "ops" layer was built from, ARGV[5…] tenant, "cap|rate|burst" pairs: the layer becomes exactly
-- these limits, and if that changed anything the version moves, so parked tenants are judged
-- again (a queue that never had limits gets no key). An "ops" layer older than the one written
-- is refused, so a worker that read the changes before an operator's newest one cannot undo it.
-- Returns 1 if it changed.
if command == "replace" then
    local layer = ARGV[3] .. "|"
    if ARGV[3] == "ops" then
        local generation = tonumber(ARGV[4])
        if generation < tonumber(redis.call("GET", P .. ":limits:generation") or "0") then
            return 0
        end
        redis.call("SET", P .. ":limits:generation", generation)
    end
    local wanted = {}
    for i = 5, #ARGV, 2 do
        wanted[layer .. ARGV[i]] = ARGV[i + 1]
    end
    local changed = false
    local current = redis.call("HGETALL", P .. ":limits")
    for i = 1, #current, 2 do
        if string.sub(current[i], 1, #layer) == layer then
            if wanted[current[i]] == current[i + 1] then
                wanted[current[i]] = nil
            else
                redis.call("HDEL", P .. ":limits", current[i])
                changed = true
            end
        end
    end
    for field, value in pairs(wanted) do
        redis.call("HSET", P .. ":limits", field, value)
        changed = true
    end
    if changed then
        redis.call("INCR", P .. ":limits:version")
        return 1
    end
    return 0

-- describe: ARGV[3…] tenants ("" for the default). Returns one "cap|rate|burst" per tenant.
elseif command == "describe" then
    local out = {}
    for i = 3, #ARGV do
        local limit = limits_of(P, ARGV[i])
        out[#out + 1] = (limit.cap or "") .. "|" .. (limit.rate or "") .. "|" .. (limit.burst or "")
    end
    return out

-- acquire: ARGV[3] tenant, ARGV[4] lease id, ARGV[5] lease ms. Returns {"", 0} with the lease
-- taken, or {reason, ms to wait}: "c" at the cap, "r" out of tokens. Idempotent per lease id.
elseif command == "acquire" then
    local tenant, lease, lease_ms = ARGV[3], ARGV[4], tonumber(ARGV[5])
    local key = running_key(tenant)
    if redis.call("ZSCORE", key, lease) then
        redis.call("ZADD", key, string.format("%.0f", now + lease_ms), lease)
        return { "", 0 }
    end
    local limit = limits_of(P, tenant)
    if limit.cap and running(tenant) >= limit.cap then
        return { "c", 0 }
    end
    local wait = limits_take_token(P, tenant, limit, now)
    if wait > 0 then
        return { "r", wait }
    end
    if limit.cap then
        redis.call("ZADD", key, string.format("%.0f", now + lease_ms), lease)
        redis.call("SADD", P .. ":limits:running", tenant)
    end
    return { "", 0 }

-- release: ARGV[3] tenant, ARGV[4] lease id. Returns 1 if the lease was held.
elseif command == "release" then
    return redis.call("ZREM", running_key(ARGV[3]), ARGV[4])

-- renew: ARGV[3] lease ms, ARGV[4…] tenant, lease id pairs. Extends leases still held.
elseif command == "renew" then
    local expiry = string.format("%.0f", now + tonumber(ARGV[3]))
    for i = 4, #ARGV, 2 do
        redis.call("ZADD", running_key(ARGV[i]), "XX", expiry, ARGV[i + 1])
    end
    return 1

-- in_flight: tenant, count pairs of the live leases.
elseif command == "in_flight" then
    local out = {}
    for _, tenant in ipairs(redis.call("SMEMBERS", P .. ":limits:running")) do
        local count = running(tenant)
        if count == 0 then
            redis.call("SREM", P .. ":limits:running", tenant)
        else
            out[#out + 1] = tenant
            out[#out + 1] = count
        end
    end
    return out
end

return redis.error_reply("unknown command " .. tostring(command))
