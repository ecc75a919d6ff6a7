-- A rank of a gang ends it without a commit; the model goes back to idle at
-- its last committed version (the epoch in flight is lost, not the model)
-- and every other rank's next renewal hears 'lost', so their workers kill
-- their training processes.  How:
--   'abort'    the gang broke, not through the model (a rank killed or
--              stalled, a peer lost, Redis): a stall, as when the reaper
--              frees an expired lease; past the sweep's max_stalls the
--              model fails.  A gang that never had every rank taken (a
--              worker named for one was busy elsewhere, or gone) never
--              trained: no stall;
--   'attempt'  the model's own failure (a corrupt checkpoint, a shard that
--              cannot be read): a failed attempt with a backoff, as
--              mop_fail; at max_attempts the model fails;
--   'final'    a failure every try would repeat (the loss diverged, out of
--              memory): the model fails now.
-- Only the first end of a gang counts: the others find it gone ('lost').
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models, 6 wake
-- ARGV: 1 model m, 2 gang G, 3 rank r, 4 token, 5 how, 6 reason,
--       7 backoff factor in [0.5, 1], 8 a note added to the reason when the
--       model fails, or ''
-- Returns {'aborted', stalls (0: not counted)} | {'retry', attempts, max_attempts, delay_ms}
--       | {'failed', sweep_done, attempts} | {'lost'} | {'missing'}.
local sw = redis.call('HMGET', KEYS[1], 'state', 'max_stalls')
if not sw[1] then return {'missing'} end
local m, G, r, how = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[5]
local p = m .. '.'
local now = now_ms()
-- An end from a rank past the gang's deadline still counts while nobody
-- reaped it (the holder may say sooner what the reaper would say later).
local f = redis.call('HMGET', KEYS[2], p .. 'state', p .. 'gang')
local g = string.match(f[2] or '', '^(%d+) ')
local taken, _, tok = gang_rank(KEYS[2], m, r)
if f[1] ~= 'leased' or g ~= G or tok ~= ARGV[4] or taken ~= '1' then return {'lost'} end

local whole = gang_whole(KEYS[2], m)
gang_clear(KEYS[2], m)
redis.call('HSET', KEYS[2], p .. 'state', 'idle', p .. 'token', '', p .. 'worker', '', p .. 'shard', '',
  p .. 'deadline', '', p .. 'progress', '', p .. 'error', ARGV[6])
redis.call('HSET', KEYS[1], 'updated', int(now))
wake_mop(KEYS[6], 1)
local reason
if how == 'abort' and not whole then return {'aborted', 0} end
if how == 'abort' then
  local stalls = redis.call('HINCRBY', KEYS[2], p .. 'stalls', 1)
  local max_stalls = tonumber(sw[2]) or 10
  if stalls <= max_stalls then return {'aborted', stalls} end
  reason = string.format('stalled %d times: its gang broke every time (last: %s)', stalls, ARGV[6])
else
  local attempts = redis.call('HINCRBY', KEYS[2], p .. 'attempts', 1)
  local max_attempts, base, cap = retry_settings(KEYS[1])
  if how ~= 'final' and attempts < max_attempts then
    local delay = backoff_ms(attempts, base, cap, tonumber(ARGV[7]) or 1)
    redis.call('HSET', KEYS[2], p .. 'not_before', int(now + delay))
    return {'retry', attempts, max_attempts, delay}
  end
  reason = ARGV[6]
  if how ~= 'final' then reason = string.format('failed %d of %d attempts: %s', attempts, max_attempts, reason) end
end
if ARGV[8] and ARGV[8] ~= '' then reason = reason .. '; ' .. ARGV[8] end
local done = fail_model(KEYS[1], KEYS[2], p, reason, sw[1], now)
return {'failed', done, tonumber(redis.call('HGET', KEYS[2], p .. 'attempts')) or 0}
