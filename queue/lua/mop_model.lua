-- Pauses, resumes or cancels one model of a sweep (jobctl pause|resume|cancel
-- S/m).  A pause is a flag beside the state (<m>.paused = '1'), not a state
-- of its own: a lease in flight stays 'leased' and renews, commits, releases
-- or expires exactly as before, so no lease script has to know about pauses;
-- mop_lease simply never picks a paused model.  The sweep's own pause is its
-- state, apart from these flags: resuming the sweep does not resume a model
-- paused by itself, and resuming a model of a paused sweep leases nothing
-- until the sweep runs again.
-- Cancelled is final, as for a failed model: the token is cleared (the
-- holder's next renew or commit is refused and its file discarded), `live`
-- goes down, and the sweep is done when no live model remains.  Epochs the
-- model finished stay on the evaluation list and are still evaluated.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models, 6 wake
-- ARGV: 1 model m, 2 paused, running or cancelled, 3 reason (for cancelled)
-- Returns {'ok', previous: idle|leased|paused} | {'no_model', M}
--       | {'final', done|failed|cancelled} | {'not_paused', idle|leased}
--       | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'state', 'models', 'shards')
if not s[1] then return {'missing'} end
local m = tonumber(ARGV[1])
if not m or m < 0 or m >= tonumber(s[2]) then return {'no_model', s[2]} end
local p = int(m) .. '.'
local f = redis.call('HMGET', KEYS[2], p .. 'state', p .. 'paused')
local st, paused = f[1], f[2] == '1'
if st ~= 'idle' and st ~= 'leased' and st ~= 'rung' then return {'final', st or '?'} end
local previous = paused and 'paused' or st
local now = int(now_ms())
local want = ARGV[2]
if want == 'paused' then
  if paused then return {'ok', previous} end
  redis.call('HSET', KEYS[2], p .. 'paused', '1')
elseif want == 'running' then
  if not paused then return {'not_paused', st} end
  redis.call('HSET', KEYS[2], p .. 'paused', '')
  -- Any shard's worker may want it now.
  wake_mop(KEYS[6], tonumber(s[3]) or 1)
else
  redis.call('HSET', KEYS[2], p .. 'state', 'cancelled', p .. 'reason', ARGV[3], p .. 'token', '',
    p .. 'shard', '', p .. 'deadline', '', p .. 'paused', '')
  model_finished(KEYS[1], s[1], now)
  -- Idle workers hear at once when that was the last live model.
  wake_mop(KEYS[6], 1)
end
redis.call('HSET', KEYS[1], 'updated', now)
return {'ok', previous}
