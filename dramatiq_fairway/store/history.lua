-- Add one flush's finished jobs to the per-minute history buckets (store/history.py;
-- docs/design.md, "History in Redis"). One call per status-writer flush, in the flush's pipeline:
-- the buckets cost no round trip of their own.
--
-- KEYS[k]  one bucket hash {<namespace>:hist}:<kind>:<minute>; every key shares the hash tag
--          {<namespace>:hist}, so the call touches one hash slot
-- ARGV[1]  TTL in seconds, set on every key the call touches
-- then one group per key, in KEYS order: n, then n pairs of field, increment (integers)
--
-- Invariant: a bucket only grows while its minute is kept (HINCRBY), so readers can add the
-- buckets of any number of processes and flushes; it expires TTL seconds after its last write.

local ttl = ARGV[1]
local a = 2
for k = 1, #KEYS do
    local n = tonumber(ARGV[a])
    for i = a + 1, a + 2 * n, 2 do
        redis.call("HINCRBY", KEYS[k], ARGV[i], ARGV[i + 1])
    end
    redis.call("EXPIRE", KEYS[k], ttl)
    a = a + 1 + 2 * n
end
return #KEYS
