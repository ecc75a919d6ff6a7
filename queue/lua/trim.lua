-- Deletes finished jobs chosen by the client (by age or by count), skipping
-- any that left the set meanwhile (a retried job is alive again).
-- KEYS: 1 finished set, then job key, dependents key pairs
-- ARGV: job ids
-- Returns the number deleted.
local n = 0
for i = 2, #KEYS, 2 do
  local id = ARGV[i / 2]
  if redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', KEYS[i], KEYS[i + 1])
    n = n + 1
  end
end
return n
