-- Moves the deadline of a test-scoring claim that still holds (this token,
-- deadline not passed, nothing recorded yet); past its deadline the claim is
-- lost even if nobody took it over yet, as for every other lease.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep
-- ARGV: 1 token, 2 lease_ms
-- Returns {'renewed', deadline} | {'lost'} | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'state', 'test', 'test_token', 'test_deadline')
if not s[1] then return {'missing'} end
local now = now_ms()
if (s[2] and s[2] ~= '') or s[3] ~= ARGV[1] or now > (tonumber(s[4]) or 0) then return {'lost'} end
local deadline = int(now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'test_deadline', deadline)
return {'renewed', deadline}
