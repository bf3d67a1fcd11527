-- Record a running job's progress, only if the job is known (a job whose status is not tracked, or
-- whose key expired, gets no key without a TTL).
--
-- KEYS[1]  the job's hash: {namespace}:job:{message_id}
-- ARGV[1]  percent (0-100)
-- ARGV[2]  note ("" for none)
--
-- Returns 1 when recorded, 0 when the job is unknown. HSET keeps the key's TTL.
if redis.call("EXISTS", KEYS[1]) == 0 then
    return 0
end
redis.call("HSET", KEYS[1], "progress", ARGV[1], "note", ARGV[2])
return 1
