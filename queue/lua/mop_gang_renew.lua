-- Moves the deadline of one rank of a gang (mop_gang.lua) while the gang
-- holds its model: the model is leased to gang G, the rank was taken with
-- this token, and the model's deadline (the earliest rank's) has not
-- passed.  Rank 0's worker carries the epoch's progress (JSON) for jobctl
-- status, as a MOP visit does.
-- A gang that committed its epoch answers 'done' (its ranks may renew once
-- more before they exit; that is not a loss); any other end answers 'lost',
-- and the rank's worker kills its training process.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models
-- ARGV: 1 model m, 2 gang G, 3 rank r, 4 token, 5 lease_ms, 6 progress JSON
--       (optional)
-- Returns {'renewed', deadline} | {'done'} | {'lost'} | {'missing'}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local m, G, r = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local W = gang_holds(KEYS[2], m, G, r, ARGV[4], now)
if not W then
  if redis.call('HGET', KEYS[2], m .. '.gang_done') == G then return {'done'} end
  return {'lost'}
end
local taken, _, token, w = gang_rank(KEYS[2], m, r)
local deadline = int(now + tonumber(ARGV[5]))
redis.call('HSET', KEYS[2], m .. '.r' .. int(r), taken .. ' ' .. deadline .. ' ' .. token .. ' ' .. w)
gang_deadline(KEYS[2], m, W)
if r == 0 and ARGV[6] and ARGV[6] ~= '' then redis.call('HSET', KEYS[2], m .. '.progress', ARGV[6]) end
return {'renewed', deadline}
