-- Sum history buckets field by field on the server (store/history.py): a reader of a window of
-- minutes gets one row per distinct field instead of every minute's copy of it.
--
-- KEYS[k]  bucket hashes {<namespace>:hist}:<kind>:<minute>, all of one hash tag (one slot)
-- ARGV     none
--
-- Returns a flat list field, sum, field, sum, ... in the order fields were first seen.
-- Invariant: read-only; every bucket field is an integer count, so the sums are exact.

local sums, order = {}, {}
for k = 1, #KEYS do
    local flat = redis.call("HGETALL", KEYS[k])
    for i = 1, #flat, 2 do
        local field = flat[i]
        local sum = sums[field]
        if sum == nil then
            order[#order + 1] = field
            sums[field] = tonumber(flat[i + 1])
        else
            sums[field] = sum + tonumber(flat[i + 1])
        end
    end
end
local out = {}
for i, field in ipairs(order) do
    out[2 * i - 1] = field
    out[2 * i] = sums[field]
end
return out
