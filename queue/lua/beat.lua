-- Registers a live worker: its hash expires unless renewed, and the workers
-- set remembers when each was last seen (server time).
-- KEYS: 1 worker hash, 2 workers set
-- ARGV: 1 worker id, 2 ttl_ms, then field, value pairs
local now = int(now_ms())
local fields = {'last_seen_ms', now}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], now, ARGV[1])
return now
