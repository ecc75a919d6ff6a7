-- Claims the scoring of a done sweep's chosen model on the test split, as a
-- lease kept on the sweep hash: test_by (the worker), test_token and
-- test_deadline.  Claimable when the sweep is done, no evaluation waits or
-- is in flight (so every result is in and the choice cannot change any
-- more), no result is recorded yet, and no claim holds: a claim whose
-- deadline passed (its worker died or hung) is taken over, and its late
-- record will be refused (mop_test_record).  After a failed attempt
-- (mop_test_fail) nobody claims it before test_not_before.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 4 evals, 7 evaling
-- ARGV: 1 worker, 2 lease_ms, 3 token
-- Returns {'claimed', deadline} | {'pending'} | {'taken', worker}
--       | {'recorded'} | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'state', 'test', 'test_by', 'test_token', 'test_deadline',
  'test_not_before')
if not s[1] then return {'missing'} end
if s[2] and s[2] ~= '' then return {'recorded'} end
if s[1] ~= 'done' or redis.call('LLEN', KEYS[4]) > 0 or redis.call('HLEN', KEYS[7]) > 0 then
  return {'pending'}
end
local now = now_ms()
if s[4] and s[4] ~= '' and now <= (tonumber(s[5]) or 0) then return {'taken', s[3] or ''} end
if now < (tonumber(s[6]) or 0) then return {'pending'} end
local deadline = int(now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'test_by', ARGV[1], 'test_token', ARGV[3], 'test_deadline', deadline)
return {'claimed', deadline}
