-- Fair dispatch for FairRedisBroker: one FIFO per (priority level, tenant), levels chosen by the
-- "3 consecutive passes" rule, tenants by deficit round robin, aging one level per max_wait, and
-- per-tenant limits (concurrency cap, token bucket) enforced when a tenant comes up in its round.
-- Written for dramatiq-fairway (MIT); it shares no code with Dramatiq's dispatch.lua. It runs after
-- store/limits_lib.lua (prepended by the broker), which reads limits and keeps token buckets.
--
-- KEYS[1]  key prefix of one queue, carrying its hash tag: "{<namespace>:<queue>}". Every key this
--          call touches starts with it (same cluster slot). For "heartbeat", the workers' prefix
--          "{<namespace>:workers}" instead.
-- ARGV[1]  command: enqueue fetch ack nack requeue hold recover purge qsize depths heartbeat, and
--          adopt (fair_redis_adopt.lua, which names the two more KEYS it takes)
-- ARGV[2]  now in ms, or "" to read the Redis server's TIME (tests pass a fixed clock)
-- ARGV[3]  broker id of the calling worker (names its ack sets)
-- ARGV[4]  max_wait in ms (aging step)
-- ARGV[5]  part: "q" for the queue itself, "dq" for its delay queue (where a command has a part)
-- ARGV[6…] command arguments, described at each command below.
--
-- Keys under the prefix P:
--   P:msgs    hash rid -> body of messages on the queue (ready or in flight)
--   P:dmsgs   hash rid -> body of messages on the delay queue (a plain FIFO list P:dq)
--   P:meta    hash rid -> "native|level|enqueued_ms|seq|tenant" for every message in msgs/dmsgs
--   P:fifo:L:T   zset rid -> seq: the FIFO of level L and tenant T (seq = enqueue order)
--   P:ring:L     list of tenants: the DRR round of level L (head = tenant being served)
--   P:deficit:L  hash tenant -> DRR deficit; a field exists iff the tenant is in P:ring:L
--   P:aging:L    zset tenant -> ms when the head of P:fifo:L:T moves up a level (L = 3, 4, 5)
--   P:levels     hash L -> ready messages at level L
--   P:passed     hash L -> consecutive picks that passed level L by while it waited
--   P:seq        enqueue counter
--   P:ready, P:delayed, P:inflight   hash "native|tenant" -> count (for `fairway queues`)
--   P:weights    hash tenant -> DRR weight (absent = 1)
--   P:paused     exists while the queue is paused: fetch returns nothing
--   P:acks:B, P:dacks:B   sets of rids worker B holds from the queue / the delay queue
--   P:parked     hash tenant -> reason ("c" at its cap, "r" out of tokens) .. the levels whose ring it
--                left, e.g. "c34": a tenant skipped for a limit waits here, out of the rounds
--   P:wake       zset tenant -> ms when a tenant parked for its rate has a token again
--   P:limits:seen   the P:limits:version parked tenants were judged against
--   P:limits, P:limits:*   limits and token buckets (see limits_lib.lua); in flight per tenant is the sum of
--                P:inflight["L|tenant"] over its native levels L (CRITICAL left out when exempt)
--   P:xq, P:xmsgs         dead messages: zset rid -> time of death, hash rid -> body
--
-- Invariants kept by every command:
--   * a rid is in exactly one of: a fifo, P:dq, an ack set, P:xq (or nowhere once acked);
--   * a tenant T is in P:ring:L exactly once iff P:deficit:L has field T, and every non-empty
--     P:fifo:L:T has T in P:ring:L (a ring may also hold tenants whose fifo emptied by aging;
--     they are dropped when they reach the head, so each pick stays O(1) amortised);
--   * P:levels[L] is the number of rids in all P:fifo:L:*;
--   * P:aging:L[T] is due time of the head of a non-empty P:fifo:L:T, absent otherwise;
--   * a tenant with a field in P:deficit:L is either in P:ring:L or parked with L in P:parked[T],
--     never both: parking keeps its deficit (docs/design.md, "Scheduling rule", rule 3). A tenant parked at its cap comes
--     back when one of its messages leaves the in-flight count (ack, nack, requeue, hold, recovery
--     of a dead worker), one parked for its rate at P:wake, and every one when the limits change.
-- Per pick the cost is O(levels + log n): one ZPOPMIN, and a ring head and a rotation when the
-- round has several tenants, and with limits a few O(1) reads; counters, deficits and aging due
-- times are read and written once per fetch. Each park and unpark is O(levels) and happens once
-- per block.

local P = KEYS[1]
local command = ARGV[1]
local now = call_now(ARGV[2])
local broker_id = ARGV[3]
local max_wait = tonumber(ARGV[4])
local part = ARGV[5]

local CRITICAL, HIGH, BATCH = 1, 2, 5
local PASS_LIMIT = 3
local UNPACK_SLICE = 1000

local function int(x)
    return string.format("%.0f", x)
end

local function fifo_key(level, tenant)
    return P .. ":fifo:" .. level .. ":" .. tenant
end

local function encode_meta(native, level, enqueued, seq, tenant)
    return native .. "|" .. level .. "|" .. int(enqueued) .. "|" .. int(seq) .. "|" .. tenant
end

local function decode_meta(raw)
    if not raw then
        return nil
    end
    local native, level, enqueued, seq, tenant = string.match(raw, "^(%d)|(%d)|(%-?%d+)|(%d+)|(.*)$")
    return {
        native = tonumber(native),
        level = tonumber(level),
        enqueued = tonumber(enqueued),
        seq = tonumber(seq),
        tenant = tenant,
    }
end

local function bump(hash, field, delta)
    if redis.call("HINCRBY", hash, field, delta) <= 0 then
        redis.call("HDEL", hash, field)
    end
end

local function counter_field(meta)
    return meta.native .. "|" .. meta.tenant
end

-- Refresh the aging due time of the head of (level, tenant).
local function set_head(level, tenant)
    if level <= HIGH then
        return
    end
    local head = redis.call("ZRANGE", fifo_key(level, tenant), 0, 0)
    if #head == 0 then
        redis.call("ZREM", P .. ":aging:" .. level, tenant)
        return
    end
    local meta = decode_meta(redis.call("HGET", P .. ":meta", head[1]))
    local due = meta.enqueued + (meta.native - level + 1) * max_wait
    redis.call("ZADD", P .. ":aging:" .. level, int(due), tenant)
end

-- Put rid (whose meta is already stored) at its place in the FIFO of (level, tenant).
local function push_ready(level, tenant, rid, seq)
    local fifo = fifo_key(level, tenant)
    redis.call("ZADD", fifo, int(seq), rid)
    redis.call("HINCRBY", P .. ":levels", level, 1)
    if redis.call("HSETNX", P .. ":deficit:" .. level, tenant, 0) == 1 then
        redis.call("RPUSH", P .. ":ring:" .. level, tenant)
    end
    if level > HIGH and redis.call("ZRANGE", fifo, 0, 0)[1] == rid then
        set_head(level, tenant)
    end
end

local msgs = P .. (part == "dq" and ":dmsgs" or ":msgs")

-- Store a new message on the part: at the tail of its (level, tenant) FIFO, or of the delay queue.
local function store_message(rid, body, level, tenant)
    redis.call("HSET", msgs, rid, body)
    if part == "dq" then
        redis.call("HSET", P .. ":meta", rid, encode_meta(level, level, now, 0, tenant))
        redis.call("RPUSH", P .. ":dq", rid)
        bump(P .. ":delayed", level .. "|" .. tenant, 1)
    else
        local seq = redis.call("INCR", P .. ":seq")
        redis.call("HSET", P .. ":meta", rid, encode_meta(level, level, now, seq, tenant))
        push_ready(level, tenant, rid, seq)
        bump(P .. ":ready", level .. "|" .. tenant, 1)
    end
end

-- enqueue: ARGV[6] rid, ARGV[7] body, ARGV[8] level, ARGV[9] tenant, then as many more groups of
-- these four as the caller sends (enqueue_many: a batch's messages of one queue in few calls).
-- Returns how many were stored. Answered here, before the script defines what the other commands
-- use (the fetch's functions and tables): a send pays only for what it runs (~4 µs of server time).
if command == "enqueue" then
    local stored = 0
    for i = 6, #ARGV, 4 do
        store_message(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3])
        stored = stored + 1
    end
    return stored
end

-- Aging: move the heads whose due time passed up to the level their wait earns, at most `budget`
-- moves (the rest move on the next fetch). A head that moves keeps its seq, hence its place
-- among the messages of its tenant at the new level.
local function age(budget)
    for level = 3, BATCH do
        local aging = P .. ":aging:" .. level
        while budget > 0 do
            local due = redis.call("ZRANGE", aging, 0, 0, "WITHSCORES")
            if #due == 0 or tonumber(due[2]) > now then
                break
            end
            local tenant = due[1]
            local popped = redis.call("ZPOPMIN", fifo_key(level, tenant))
            local rid = popped[1]
            local meta = decode_meta(redis.call("HGET", P .. ":meta", rid))
            local earned = meta.native - math.floor((now - meta.enqueued) / max_wait)
            local target = math.max(HIGH, math.min(level - 1, earned))
            redis.call("HINCRBY", P .. ":levels", level, -1)
            redis.call("HSET", P .. ":meta", rid, encode_meta(meta.native, target, meta.enqueued, meta.seq, tenant))
            push_ready(target, tenant, rid, meta.seq)
            set_head(level, tenant)
            budget = budget - 1
        end
    end
end

-- The scheduling rule (docs/design.md): CRITICAL first; else a waiting level passed by PASS_LIMIT times in a row
-- (the highest such); else the highest waiting level. `ready` (messages per level) is read,
-- `passed` updated in place. A level in `blocked` has no tenant that may run now: not waiting.
local function choose_level(ready, passed, blocked)
    if ready[CRITICAL] > 0 and not blocked[CRITICAL] then
        return CRITICAL
    end
    local waiting = {}
    local chosen
    for level = HIGH, BATCH do
        waiting[level] = ready[level] > 0 and not blocked[level]
    end
    for level = HIGH + 1, BATCH do
        if waiting[level] and passed[level] >= PASS_LIMIT then
            chosen = level
            break
        end
    end
    if not chosen then
        for level = HIGH, BATCH do
            if waiting[level] then
                chosen = level
                break
            end
        end
    end
    if not chosen then
        return nil
    end
    for level = HIGH + 1, BATCH do
        if not waiting[level] or level == chosen then
            passed[level] = 0
        elseif level > chosen then
            passed[level] = passed[level] + 1
        end
    end
    return chosen
end

-- Take tenant (the head of level's ring) out of the round, keeping its deficit, until unpark.
local function park(tenant, level, reason, wake_at)
    redis.call("LPOP", P .. ":ring:" .. level)
    local current = redis.call("HGET", P .. ":parked", tenant)
    local levels = current and string.sub(current, 2) or ""
    if not string.find(levels, tostring(level), 1, true) then
        levels = levels .. level
    end
    redis.call("HSET", P .. ":parked", tenant, reason .. levels)
    if reason == "r" then
        redis.call("ZADD", P .. ":wake", int(wake_at), tenant)
    else
        redis.call("ZREM", P .. ":wake", tenant)
    end
end

-- Put a parked tenant back at the end of the rounds it left, with the deficits it had.
local function unpark(tenant, reason)
    local current = redis.call("HGET", P .. ":parked", tenant)
    if not current or (reason and string.sub(current, 1, 1) ~= reason) then
        return
    end
    redis.call("HDEL", P .. ":parked", tenant)
    redis.call("ZREM", P .. ":wake", tenant)
    for i = 2, #current do
        local level = string.sub(current, i, i)
        redis.call("HSETNX", P .. ":deficit:" .. level, tenant, 0)
        redis.call("RPUSH", P .. ":ring:" .. level, tenant)
    end
end

-- A message of tenant left the in-flight count: a slot is free.
local function slot_freed(tenant)
    unpark(tenant, "c")
end

-- Limits as one fetch sees them: limits read once per tenant, in-flight counts kept up to date
-- with the picks of this call. `blocked` answers nil (may run, a token was taken) or a reason.
local function limiter(exempt_critical, budget)
    local versions = redis.call("MGET", P .. ":limits:version", P .. ":limits:seen")
    if versions[1] ~= versions[2] then
        -- Limits changed (or were removed): judge every parked tenant again.
        for _, tenant in ipairs(redis.call("HKEYS", P .. ":parked")) do
            unpark(tenant)
        end
        redis.call("SET", P .. ":limits:seen", versions[1] or "0")
    end
    for _, tenant in ipairs(redis.call("ZRANGEBYSCORE", P .. ":wake", "-inf", int(now), "LIMIT", 0, budget)) do
        unpark(tenant)
    end
    local limit_of = limits_reader(P)
    local state = { on = limit_of ~= nil, limits = {}, running = {}, throttled = {} }
    if not state.on then
        return state
    end
    local first = exempt_critical and HIGH or CRITICAL
    function state.blocked(tenant, level)
        if level < first then
            return nil
        end
        local limit = state.limits[tenant]
        if not limit then
            limit = limit_of(tenant)
            state.limits[tenant] = limit
        end
        if limit.cap then
            local running = state.running[tenant]
            if not running then
                running = 0
                local fields = {}
                for native = first, BATCH do
                    fields[#fields + 1] = native .. "|" .. tenant
                end
                for _, count in ipairs(redis.call("HMGET", P .. ":inflight", unpack(fields))) do
                    running = running + (tonumber(count) or 0)
                end
            end
            if running >= limit.cap then
                state.running[tenant] = running
                return "c"
            end
            state.running[tenant] = running + 1
        end
        local wait = limits_take_token(P, tenant, limit, now)
        if wait > 0 then
            if limit.cap then
                state.running[tenant] = state.running[tenant] - 1
            end
            return "r", now + wait
        end
        return nil
    end
    return state
end

-- What one fetch keeps in memory while it picks and writes back once (flush_picks): the DRR
-- deficits (tenant -> number, or false once the tenant left the round) and weights it read, and
-- the (level, tenant) FIFOs whose head it moved, whose aging due time set_head then refreshes.
-- Nothing else reads these keys during the picks, so the keys end as picking one by one leaves them.
-- It also knows each ring's length and, until it rotates, its head, and how many messages each
-- FIFO it popped from still holds: only the picks change those, so a pick of a tenant alone in
-- its round costs one ZPOPMIN.
local picks = { deficits = {}, weights = {}, moved = {}, rings = {}, sizes = {} }
for level = CRITICAL, BATCH do
    picks.deficits[level] = {}
    picks.moved[level] = {}
    picks.sizes[level] = {}
end

local function ring_of(level)
    local ring = picks.rings[level]
    if not ring then
        local key = P .. ":ring:" .. level
        ring = { key = key, length = redis.call("LLEN", key), head = nil }
        picks.rings[level] = ring
    end
    return ring
end

-- The ring's head left it (LPOP, by the caller or by park).
local function ring_popped(ring)
    ring.length = ring.length - 1
    ring.head = nil
end

local function deficit_of(level, tenant)
    local deficit = picks.deficits[level][tenant]
    if deficit == nil then
        deficit = tonumber(redis.call("HGET", P .. ":deficit:" .. level, tenant)) or 0
    end
    -- false: the tenant left the round in this fetch (its field is deleted on flush).
    return deficit or 0
end

local function weight_of(tenant, scale)
    local weight = picks.weights[tenant]
    if not weight then
        weight = tonumber(redis.call("HGET", P .. ":weights", tenant)) or 1
        picks.weights[tenant] = weight
    end
    return weight * scale
end

local function flush_picks()
    for level = CRITICAL, BATCH do
        local deficits = P .. ":deficit:" .. level
        for tenant, deficit in pairs(picks.deficits[level]) do
            if deficit then
                redis.call("HSET", deficits, tenant, tostring(deficit))
            else
                redis.call("HDEL", deficits, tenant)
            end
        end
        for tenant in pairs(picks.moved[level]) do
            set_head(level, tenant)
        end
    end
end

-- Deficit round robin inside a level: serve the ring head while its deficit lasts, skipping (and
-- parking) tenants held back by a limit. Returns nil when no tenant of the level may run now. The
-- caller accounts for the message in P:levels and calls flush_picks once done.
local function pop_tenant(level, scale, limits)
    local ring = ring_of(level)
    local deficits, sizes = picks.deficits[level], picks.sizes[level]
    while true do
        local tenant = ring.head or redis.call("LINDEX", ring.key, 0)
        if not tenant then
            return nil
        end
        ring.head = tenant
        local fifo = fifo_key(level, tenant)
        local size = sizes[tenant] or redis.call("ZCARD", fifo)
        local popped = size > 0 and redis.call("ZPOPMIN", fifo) or {}
        local reason, wake_at
        if #popped > 0 and limits.on then
            reason, wake_at = limits.blocked(tenant, level)
        end
        if #popped == 0 then
            -- Emptied by aging while waiting in the ring: leave the round.
            redis.call("LPOP", ring.key)
            ring_popped(ring)
            deficits[tenant] = false
        elseif reason then
            -- Back at the head of its FIFO (same seq), and the tenant out of the round.
            redis.call("ZADD", fifo, popped[2], popped[1])
            sizes[tenant] = size
            park(tenant, level, reason, wake_at)
            ring_popped(ring)
            limits.throttled[#limits.throttled + 1] = tenant
            limits.throttled[#limits.throttled + 1] = reason
        else
            local deficit = deficit_of(level, tenant)
            if deficit < 1 then
                deficit = deficit + weight_of(tenant, scale)
            end
            deficit = deficit - 1
            sizes[tenant] = size - 1
            if size == 1 then
                redis.call("LPOP", ring.key)
                ring_popped(ring)
                deficits[tenant] = false
            else
                -- Rotating a ring of one tenant would leave it as it is.
                if deficit < 1 and ring.length > 1 then
                    redis.call("LMOVE", ring.key, ring.key, "LEFT", "RIGHT")
                    ring.head = nil
                end
                deficits[tenant] = deficit
            end
            picks.moved[level][tenant] = true
            return popped[1]
        end
    end
end

local function kill_old_dead(ttl)
    local expired = redis.call("ZRANGEBYSCORE", P .. ":xq", "-inf", int(now - ttl), "LIMIT", 0, 100)
    for _, rid in ipairs(expired) do
        redis.call("ZREM", P .. ":xq", rid)
        redis.call("HDEL", P .. ":xmsgs", rid)
    end
end

local acks = P .. (part == "dq" and ":dacks:" or ":acks:") .. broker_id

-- fetch: ARGV[6] how many, ARGV[7] DRR scale (quantum = weight * scale >= 1), ARGV[8] "1" when
-- CRITICAL is exempt from limits. Returns {{rid1, body1, rid2, body2, ...}, {tenant, reason, ...},
-- active} (the tenants skipped for a limit, reason "c" or "r"; the tenants left in the rounds, or
-- for the delay queue its length: how workers weigh this partition, store/partitions.py) and
-- moves the rids to this worker's ack set.
if command == "fetch" then
    local wanted = tonumber(ARGV[6])
    local out = {}
    if part == "dq" then
        while #out < 2 * wanted do
            local rid = redis.call("LPOP", P .. ":dq")
            if not rid then
                break
            end
            local body = redis.call("HGET", msgs, rid)
            if body then
                redis.call("SADD", acks, rid)
                out[#out + 1] = rid
                out[#out + 1] = body
            end
        end
        return { out, {}, redis.call("LLEN", P .. ":dq") }
    end
    if redis.call("EXISTS", P .. ":paused") == 1 then
        return { out, {}, 0 }
    end
    local scale = tonumber(ARGV[7])
    age(wanted + 32)
    local limits = limiter(ARGV[8] == "1", wanted + 32)
    -- Counters are read once, kept here while picking and written back once.
    local stored = redis.call("HMGET", P .. ":passed", 3, 4, 5)
    local passed = { 0, 0, tonumber(stored[1]) or 0, tonumber(stored[2]) or 0, tonumber(stored[3]) or 0 }
    local counts = redis.call("HMGET", P .. ":levels", 1, 2, 3, 4, 5)
    local ready, taken = {}, {}
    for level = CRITICAL, BATCH do
        ready[level] = tonumber(counts[level]) or 0
        taken[level] = 0
    end
    local rids, blocked = {}, {}
    for _ = 1, wanted do
        local level, rid
        while true do
            local before = { passed[3], passed[4], passed[5] }
            level = choose_level(ready, passed, blocked)
            if not level then
                break
            end
            rid = pop_tenant(level, scale, limits)
            if rid then
                break
            end
            -- Every tenant of this level is parked: pick again as if the level were empty.
            blocked[level] = true
            passed[3], passed[4], passed[5] = before[1], before[2], before[3]
        end
        if not rid then
            break
        end
        ready[level] = ready[level] - 1
        taken[level] = taken[level] + 1
        rids[#rids + 1] = rid
    end
    flush_picks()
    redis.call("HSET", P .. ":passed", 3, passed[3], 4, passed[4], 5, passed[5])
    local active = 0
    for level = CRITICAL, BATCH do
        local ring = picks.rings[level]
        active = active + (ring and ring.length or redis.call("LLEN", P .. ":ring:" .. level))
    end
    if #rids == 0 then
        return { out, limits.throttled, active }
    end
    for level = CRITICAL, BATCH do
        if taken[level] > 0 then
            redis.call("HINCRBY", P .. ":levels", level, -taken[level])
        end
    end
    local served = {}
    -- In slices: unpack() is bounded by the Lua stack.
    for first = 1, #rids, UNPACK_SLICE do
        local last = math.min(first + UNPACK_SLICE - 1, #rids)
        redis.call("SADD", acks, unpack(rids, first, last))
        local bodies = redis.call("HMGET", msgs, unpack(rids, first, last))
        local metas = redis.call("HMGET", P .. ":meta", unpack(rids, first, last))
        for i = first, last do
            out[#out + 1] = rids[i]
            out[#out + 1] = bodies[i - first + 1]
            local field = counter_field(decode_meta(metas[i - first + 1]))
            served[field] = (served[field] or 0) + 1
        end
    end
    for field, count in pairs(served) do
        bump(P .. ":ready", field, -count)
        bump(P .. ":inflight", field, count)
    end
    return { out, limits.throttled, active }

-- ack: ARGV[6…] rids (also removes undecodable bodies). Only rids this worker holds count:
-- a rid recovered from this worker meanwhile belongs to the queue again.
elseif command == "ack" or command == "nack" then
    local first = 6
    if command == "nack" then
        first = 7
        kill_old_dead(tonumber(ARGV[6]))
    end
    -- Per rid only the ack set is touched; metas (and a nack's bodies) are read, and bodies and
    -- metas deleted, counters updated and freed slots handed back, once per batch.
    local gone, left, freed, is_freed = {}, {}, {}, {}
    for i = first, #ARGV do
        if redis.call("SREM", acks, ARGV[i]) == 1 then
            gone[#gone + 1] = ARGV[i]
        end
    end
    for first_gone = 1, #gone, UNPACK_SLICE do
        local last = math.min(first_gone + UNPACK_SLICE - 1, #gone)
        local metas = redis.call("HMGET", P .. ":meta", unpack(gone, first_gone, last))
        local bodies = command == "nack" and redis.call("HMGET", msgs, unpack(gone, first_gone, last))
        for i = first_gone, last do
            local meta = decode_meta(metas[i - first_gone + 1])
            if meta then
                local field = counter_field(meta)
                left[field] = (left[field] or 0) + 1
                if part ~= "dq" and not is_freed[meta.tenant] then
                    -- In ack order: unparked tenants rejoin the rounds in that order.
                    is_freed[meta.tenant] = true
                    freed[#freed + 1] = meta.tenant
                end
            end
            local body = bodies and bodies[i - first_gone + 1]
            if body then
                redis.call("ZADD", P .. ":xq", int(now), gone[i])
                redis.call("HSET", P .. ":xmsgs", gone[i], body)
            end
        end
        redis.call("HDEL", msgs, unpack(gone, first_gone, last))
        redis.call("HDEL", P .. ":meta", unpack(gone, first_gone, last))
    end
    for field, count in pairs(left) do
        bump(P .. (part == "dq" and ":delayed" or ":inflight"), field, -count)
    end
    for _, tenant in ipairs(freed) do
        slot_freed(tenant)
    end
    return 1

-- requeue: ARGV[6…] rids this worker holds, back to the head of their FIFO (by seq).
elseif command == "requeue" then
    for i = #ARGV, 6, -1 do
        local rid = ARGV[i]
        if redis.call("SREM", acks, rid) == 1 then
            local meta = decode_meta(redis.call("HGET", P .. ":meta", rid))
            if meta and part == "dq" then
                redis.call("LPUSH", P .. ":dq", rid)
            elseif meta then
                push_ready(meta.level, meta.tenant, rid, meta.seq)
                bump(P .. ":inflight", counter_field(meta), -1)
                bump(P .. ":ready", counter_field(meta), 1)
                slot_freed(meta.tenant)
            end
        end
    end
    return 1

-- hold: ARGV[6] rid held by this worker, ARGV[7] rid of its waiting copy, ARGV[8] the copy's body.
-- Atomically: the original leaves the ack set, the copy joins the delay queue. Returns 1, or 0
-- when the rid is no longer this worker's (then nothing changes).
elseif command == "hold" then
    local rid, copy_rid, copy_body = ARGV[6], ARGV[7], ARGV[8]
    if redis.call("SREM", acks, rid) == 0 then
        return 0
    end
    local meta = decode_meta(redis.call("HGET", P .. ":meta", rid))
    redis.call("HDEL", msgs, rid)
    redis.call("HDEL", P .. ":meta", rid)
    if meta then
        bump(P .. ":inflight", counter_field(meta), -1)
        slot_freed(meta.tenant)
        redis.call("HSET", P .. ":dmsgs", copy_rid, copy_body)
        redis.call("HSET", P .. ":meta", copy_rid, encode_meta(meta.native, meta.native, now, 0, meta.tenant))
        redis.call("RPUSH", P .. ":dq", copy_rid)
        bump(P .. ":delayed", counter_field(meta), 1)
    end
    return 1

-- recover: ARGV[6] id of a dead worker. Its held messages go back where they were, keeping
-- level, tenant and FIFO place. Returns how many.
elseif command == "recover" then
    local dead = ARGV[6]
    local count = 0
    local held = P .. ":acks:" .. dead
    for _, rid in ipairs(redis.call("SMEMBERS", held)) do
        local meta = decode_meta(redis.call("HGET", P .. ":meta", rid))
        if meta then
            push_ready(meta.level, meta.tenant, rid, meta.seq)
            bump(P .. ":inflight", counter_field(meta), -1)
            bump(P .. ":ready", counter_field(meta), 1)
            slot_freed(meta.tenant)
            count = count + 1
        end
    end
    local dheld = P .. ":dacks:" .. dead
    for _, rid in ipairs(redis.call("SMEMBERS", dheld)) do
        if redis.call("HEXISTS", P .. ":dmsgs", rid) == 1 then
            redis.call("LPUSH", P .. ":dq", rid)
            count = count + 1
        end
    end
    redis.call("DEL", held, dheld)
    return count

-- purge: drop every message of the queue, its delay queue and its dead messages. Rids still in
-- ack sets lose their body and meta, so a late ack, nack or requeue of them does nothing.
elseif command == "purge" then
    for level = CRITICAL, BATCH do
        local ring = P .. ":ring:" .. level
        for _, tenant in ipairs(redis.call("LRANGE", ring, 0, -1)) do
            redis.call("DEL", fifo_key(level, tenant))
        end
        redis.call("DEL", ring, P .. ":deficit:" .. level, P .. ":aging:" .. level)
    end
    redis.call(
        "DEL",
        P .. ":msgs",
        P .. ":dmsgs",
        P .. ":meta",
        P .. ":dq",
        P .. ":xq",
        P .. ":xmsgs",
        P .. ":levels",
        P .. ":passed",
        P .. ":ready",
        P .. ":delayed",
        P .. ":inflight",
        P .. ":parked",
        P .. ":wake"
    )
    return 1

-- qsize: messages of the part not yet acked (what Broker.join waits for).
elseif command == "qsize" then
    return redis.call("HLEN", msgs)

-- depths: {ready, delayed, in_flight} as flat "native|tenant", count lists.
elseif command == "depths" then
    return {
        redis.call("HGETALL", P .. ":ready"),
        redis.call("HGETALL", P .. ":delayed"),
        redis.call("HGETALL", P .. ":inflight"),
    }

-- heartbeat (KEYS[1] = workers prefix W): ARGV[6] ms after which a heartbeat is stale, ARGV[7…]
-- the queues this worker consumes. Refreshes its heartbeat and its entry in W:queues:<id> (gone
-- if another worker took it for dead); returns now and the stale workers as id, ms pairs.
elseif command == "heartbeat" then
    redis.call("ZADD", P .. ":heartbeats", int(now), broker_id)
    for i = 7, #ARGV do
        redis.call("SADD", P .. ":queues:" .. broker_id, ARGV[i])
    end
    local stale = redis.call("ZRANGEBYSCORE", P .. ":heartbeats", "-inf", int(now - tonumber(ARGV[6])), "WITHSCORES")
    return { int(now), stale }
end

-- Every command above returns. fair_redis_adopt.lua is appended here by the broker (it ends with
-- the reply to an unknown command), so its command shares this file's functions and keys.
