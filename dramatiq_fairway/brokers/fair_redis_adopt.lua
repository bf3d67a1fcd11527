-- adopt: move messages left by stock Dramatiq's RedisBroker into this queue (`fairway migrate`,
-- dramatiq_fairway/ops/migrate_redis.py). Appended to fair_redis.lua, whose locals it uses.
--
-- KEYS[1]  the queue's prefix P, as for every command of fair_redis.lua
-- KEYS[2]  the stock ids: "<ns>:<q>" or "<ns>:<q>.DQ" (lists), "<ns>:<q>.XQ" (zset), or the ack
--          set "<ns>:__acks__.<worker>.<q or q.DQ>" of a stock worker found dead (set)
-- KEYS[3]  the stock bodies of those ids: "<ns>:<q>.msgs", "<ns>:<q>.DQ.msgs" or "<ns>:<q>.XQ.msgs"
--          (hash id -> body)
-- ARGV[5]  where the messages go: "q" ready, "dq" delayed, "xq" dead
-- ARGV[6]  what the rids of P start with: "" (partition 0), or "<i>:" for partition i
--          (store/partitions.py; every tenant of the triples lives in P's partition)
-- ARGV[7…] triples: stock id (ARGV[6] .. stock id is the rid), level, tenant
-- Returns how many messages moved.
--
-- KEYS[2] and KEYS[3] have no hash tag, as stock Dramatiq names them, so this call spans three
-- hash slots: stock Dramatiq itself runs only on a single Redis (its dispatch.lua mixes slots too),
-- and so does this call. It is what makes each move atomic: a message is in exactly one layout.
--
-- Invariants: an id is moved only if it was still in KEYS[2] (an id a live stock worker took
-- meanwhile stays with it); an id without a body is dropped from KEYS[2] (stock Dramatiq
-- would fetch nothing for it); a moved message keeps its body byte for byte, and enters fair_redis.lua's
-- layout with every invariant listed there, exactly as an "enqueue" (or a "nack", for "xq") would.
if command == "adopt" then
    local source, bodies = KEYS[2], KEYS[3]
    local kind = redis.call("TYPE", source).ok
    local moved = 0
    for i = 7, #ARGV, 3 do
        local stock_id, level, tenant = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
        local rid = ARGV[6] .. stock_id
        local removed, died
        if kind == "zset" then
            died = redis.call("ZSCORE", source, stock_id)
            removed = redis.call("ZREM", source, stock_id)
        elseif kind == "set" then
            removed = redis.call("SREM", source, stock_id)
        else
            removed = redis.call("LREM", source, 1, stock_id)
        end
        local body = redis.call("HGET", bodies, stock_id)
        if removed == 1 and body then
            redis.call("HDEL", bodies, stock_id)
            if part == "xq" then
                -- Its time of death is kept, so fairway's dead-message TTL counts from it.
                redis.call("ZADD", P .. ":xq", died or int(now), rid)
                redis.call("HSET", P .. ":xmsgs", rid, body)
            else
                store_message(rid, body, level, tenant)
            end
            moved = moved + 1
        end
    end
    return moved
end

return redis.error_reply("unknown command " .. tostring(command))
