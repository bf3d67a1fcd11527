-- Queued messages per (level, tenant) of one queue on RabbitMQ, and where the next one goes
-- (brokers/rabbitmq_tenants.py; docs/design.md, "Tenant queues on RabbitMQ").
--
-- KEYS[1]  {<namespace>:<queue>}:rabbitmq:tenants, a hash of counts; fields:
--            l|<level>|<tenant>  the tenant's messages queued on its lane of that level
--            o|<level>|<tenant>  the tenant's messages queued on its own queue of that level
--          (the o| fields are also the registry of own queues that consumers follow)
-- ARGV[1]  command:
--   route  ARGV[2] level, ARGV[3] tenant, ARGV[4] isolate-at threshold. Counts one message where
--          it goes: its own queue while that holds any (FIFO behind them), or once the tenant has
--          the threshold queued on its lane; else its lane. Returns bit 0: this message goes to its
--          own queue; bit 1: the tenant's next message would, as the counts stand after this one.
--   count  ARGV[2] level, ARGV[3] tenant, ARGV[4] threshold, ARGV[5] "o" or "l": counts one message
--          already sent to its own queue or lane (decided from the bit 1 of an earlier reply, so
--          that the count travels while the message is published); returns bit 1 as route does.
--   settle ARGV[2..] pairs of field, n: n messages of that field were settled.
--   heal   ARGV[2..] pairs of field, value: drop the field if it still holds that value (a
--          consumer saw its AMQP queue empty twice with the count unchanged: a lost decrement).
--
-- Invariant: every count is > 0; a field that would reach 0 or below is deleted, so the hash
-- holds only (level, tenant) pairs with something queued, and a count never goes negative.

local key = KEYS[1]
local command = ARGV[1]

if command == "route" or command == "count" then
    local suffix = "|" .. ARGV[2] .. "|" .. ARGV[3]
    local isolate_at = tonumber(ARGV[4])
    local own = tonumber(redis.call("HGET", key, "o" .. suffix) or "0")
    local lane = tonumber(redis.call("HGET", key, "l" .. suffix) or "0")
    local to_own
    if command == "route" then
        to_own = own > 0 or lane >= isolate_at
    else
        to_own = ARGV[5] == "o"
    end
    if to_own then
        own = redis.call("HINCRBY", key, "o" .. suffix, 1)
    else
        lane = redis.call("HINCRBY", key, "l" .. suffix, 1)
    end
    local next_own = (own > 0 or lane >= isolate_at) and 2 or 0
    return next_own + (to_own and 1 or 0)
end

if command == "settle" then
    for i = 2, #ARGV, 2 do
        if redis.call("HINCRBY", key, ARGV[i], -tonumber(ARGV[i + 1])) <= 0 then
            redis.call("HDEL", key, ARGV[i])
        end
    end
    return 0
end

if command == "heal" then
    local healed = 0
    for i = 2, #ARGV, 2 do
        if redis.call("HGET", key, ARGV[i]) == ARGV[i + 1] then
            healed = healed + redis.call("HDEL", key, ARGV[i])
        end
    end
    return healed
end

return redis.error_reply("tenant_counts.lua: unknown command " .. tostring(command))
