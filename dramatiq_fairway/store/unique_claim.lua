-- Claim an idempotency key for one message: the first message to claim it runs, any other message
-- claiming it within the TTL is a duplicate. The same message claiming again (a retry, a
-- redelivery) still owns it. (SET NX GET would do this in one command, but not on Redis 6.2.)
--
-- KEYS[1]  {namespace}:unique:{key}
-- ARGV[1]  message id
-- ARGV[2]  TTL in milliseconds
--
-- Returns 1 when the message owns the key, 0 when another message does.
local owner = redis.call("GET", KEYS[1])
if not owner then
    redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
    return 1
end
if owner == ARGV[1] then
    return 1
end
return 0
