-- Records the test-split score of a done sweep's chosen model, if the claim
-- still holds (this token, deadline not passed): the sweep's `test` field
-- gets the figures (or "error <why>", or "none <why>" when no model can be
-- chosen) and the claim's token and deadline are cleared.  A claim that was
-- lost is refused: another worker may be scoring it now.  The sweep is then
-- finished (the rule of mop_reap; nothing waited or was in flight when the
-- claim was granted, and a done sweep queues no evaluation), so it leaves
-- the active set at once.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 4 evals, 7 evaling,
--       9 active
-- ARGV: 1 token, 2 the result, 3 the sweep id
-- Returns {'recorded'} | {'lost'} | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'state', 'test', 'test_token', 'test_deadline')
if not s[1] then return {'missing'} end
local now = now_ms()
if (s[2] and s[2] ~= '') or s[3] ~= ARGV[1] or now > (tonumber(s[4]) or 0) then return {'lost'} end
redis.call('HSET', KEYS[1], 'test', ARGV[2], 'test_token', '', 'test_deadline', '', 'updated', int(now))
if redis.call('LLEN', KEYS[4]) == 0 and redis.call('HLEN', KEYS[7]) == 0 then
  redis.call('ZREM', KEYS[9], ARGV[3])
end
return {'recorded'}
