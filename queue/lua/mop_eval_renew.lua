-- Moves the deadline of an evaluation lease that still holds: its token is in
-- the in-flight hash and the deadline has not passed.  As for model leases,
-- past the deadline it is lost even before a reaper puts it back, so renew,
-- record and reap agree on when it ended.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 7 evaling
-- ARGV: 1 token, 2 lease_ms
-- Returns {'renewed', deadline} | {'lost'} | {'missing'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local v = redis.call('HGET', KEYS[7], ARGV[1])
if not v then return {'lost'} end
local entry, deadline, worker = string.match(v, '^(%d+ %d+ %d+) (%d+) (.*)$')
local now = now_ms()
if not entry or now > tonumber(deadline) then return {'lost'} end
local new_deadline = int(now + tonumber(ARGV[2]))
redis.call('HSET', KEYS[7], ARGV[1], entry .. ' ' .. new_deadline .. ' ' .. worker)
return {'renewed', new_deadline}
