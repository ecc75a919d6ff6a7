-- Records a failed attempt at the test scoring of a done sweep (the chosen
-- model's checkpoint or a test shard could not be read ...), if the claim
-- still holds: as for a queue job's attempts, below the sweep's
-- max_attempts the claim is cleared and no worker claims it again before
-- now + min(cap, base * 2^(n-1)) * factor (test_not_before, which
-- mop_test_claim honours); at max_attempts the sweep's `test` field records
-- the failure with its reason, which finishes the sweep as a recorded score
-- would.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 4 evals, 7 evaling,
--       9 active
-- ARGV: 1 token, 2 why, 3 backoff factor in [0.5, 1], 4 the sweep id
-- Returns {'retry', attempts, delay_ms} | {'failed', attempts} | {'lost'}
--       | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'state', 'test', 'test_token', 'test_deadline')
if not s[1] then return {'missing'} end
local now = now_ms()
if (s[2] and s[2] ~= '') or s[3] ~= ARGV[1] or now > (tonumber(s[4]) or 0) then return {'lost'} end
local attempts = redis.call('HINCRBY', KEYS[1], 'test_attempts', 1)
local max_attempts, base, cap = retry_settings(KEYS[1])
if attempts < max_attempts then
  local delay = backoff_ms(attempts, base, cap, tonumber(ARGV[3]) or 1)
  redis.call('HSET', KEYS[1], 'test_token', '', 'test_deadline', '', 'test_not_before', int(now + delay),
    'test_error', ARGV[2], 'updated', int(now))
  return {'retry', attempts, delay}
end
local result = cjson.encode({error = string.format('test scoring failed %d of %d attempts: %s', attempts,
  max_attempts, ARGV[2])})
redis.call('HSET', KEYS[1], 'test', result, 'test_token', '', 'test_deadline', '', 'test_not_before', '',
  'test_error', ARGV[2], 'updated', int(now))
if redis.call('LLEN', KEYS[4]) == 0 and redis.call('HLEN', KEYS[7]) == 0 then
  redis.call('ZREM', KEYS[9], ARGV[4])
end
return {'failed', attempts}
