-- Records a failed visit of a leased model (a corrupt checkpoint, a shard
-- that cannot be read, a full disk: anything but a lost lease, a drain or
-- Redis itself) with the same accounting as a queue job's attempts
-- (DESIGN.md §4): the model's failed attempts since its last commit go up;
-- below the sweep's max_attempts it is idle again but not leased before
-- now + min(cap, base * 2^(n-1)) * factor (mop_lease skips it until then),
-- and at max_attempts, or for a failure that would recur on every try
-- ('final': out of memory, a loss that diverged), it fails with the reason:
-- it takes no more leases and counts as finished, so the rest of the sweep
-- goes on.  The holder of an expired but unreaped lease may still report
-- it, as with release.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models, 6 wake
-- ARGV: 1 model m, 2 token, 3 reason, 4 'attempt' or 'final',
--       5 backoff factor in [0.5, 1], 6 a note added to the reason when the
--       model fails (say, that an older checkpoint is intact), or ''
-- Returns {'retry', attempts, max_attempts, delay_ms}
--       | {'failed', sweep_done, attempts} | {'lost'} | {'missing'}.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
local p = ARGV[1] .. '.'
local f = redis.call('HMGET', KEYS[2], p .. 'state', p .. 'token')
if f[1] ~= 'leased' or f[2] ~= ARGV[2] then return {'lost'} end
local now = now_ms()
local attempts = redis.call('HINCRBY', KEYS[2], p .. 'attempts', 1)
local max_attempts, base, cap = retry_settings(KEYS[1])
redis.call('HSET', KEYS[2], p .. 'error', ARGV[3], p .. 'token', '', p .. 'shard', '', p .. 'deadline', '',
  p .. 'progress', '')
redis.call('HSET', KEYS[1], 'updated', int(now))
if ARGV[4] ~= 'final' and attempts < max_attempts then
  local delay = backoff_ms(attempts, base, cap, tonumber(ARGV[5]) or 1)
  redis.call('HSET', KEYS[2], p .. 'state', 'idle', p .. 'not_before', int(now + delay))
  return {'retry', attempts, max_attempts, delay}
end
local reason = ARGV[3]
if ARGV[4] ~= 'final' then
  reason = string.format('failed %d of %d attempts: %s', attempts, max_attempts, reason)
end
if ARGV[6] and ARGV[6] ~= '' then reason = reason .. '; ' .. ARGV[6] end
local done = fail_model(KEYS[1], KEYS[2], p, reason, state, now)
wake_mop(KEYS[6], 1)
return {'failed', done, attempts}
