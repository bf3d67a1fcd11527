-- Claim an idempotency key for one message: the first message to claim it runs, any other message
-- claiming it within the TTL is a duplicate. The same message claiming again (a retry, a
-- redelivery) still owns it. (SET NX GET would do this in one command, but not on Redis 6.2.)
--
-- A message requeued from a dead letter takes the key over from the message it replaces: that
-- one failed for good, so the copy is the same job run again, not a duplicate. Taking over here,
-- rather than releasing the key at requeue, leaves no moment in which a real duplicate could
-- claim the key, and works when the key comes from a callable that only the worker's actor has.
--
-- KEYS[1]  {namespace}:unique:{key}
-- ARGV[1]  message id
-- ARGV[2]  TTL in milliseconds
-- ARGV[3]  id of the dead-lettered message this one was requeued from, or ''
--
-- Returns 1 when the message owns the key, 0 when another message does.
local owner = redis.call("GET", KEYS[1])
if not owner or (ARGV[3] ~= "" and owner == ARGV[3]) then
    redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
    return 1
end
if owner == ARGV[1] then
    return 1
end
return 0
