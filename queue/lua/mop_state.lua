-- Pauses, resumes or cancels a sweep.  Paused: no new leases, but leases in
-- flight may renew and commit.  Cancelled (final): every model not yet
-- finished becomes cancelled and its lease token is cleared, so a worker in
-- the middle of a visit hears "lost" at its next renew or commit and discards
-- its file.  Done and cancelled sweeps do not change state again.
-- The sweep's state and a model's own pause (<m>.paused, mop_model.lua) are
-- apart: resuming the sweep leaves models paused one by one paused, and a
-- model is leased only when both let it.  Cancelling clears those flags.
-- Finished epochs waiting for evaluation stay and are still evaluated; the
-- sweep leaves the active set once they are (mop_reap).
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models, 6 wake
-- ARGV: 1 new state: running, paused or cancelled
-- Returns {'ok', previous} | {'final', current} | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'state', 'models')
if not s[1] then return {'missing'} end
local want = ARGV[1]
if s[1] == want then return {'ok', s[1]} end
if s[1] == 'done' or s[1] == 'cancelled' then return {'final', s[1]} end
local now = int(now_ms())
if want == 'cancelled' then
  for m = 0, tonumber(s[2]) - 1 do
    local p = int(m) .. '.'
    local st = redis.call('HGET', KEYS[2], p .. 'state')
    if st == 'idle' or st == 'leased' then
      redis.call('HSET', KEYS[2], p .. 'state', 'cancelled', p .. 'reason', 'sweep cancelled',
        p .. 'token', '', p .. 'shard', '', p .. 'deadline', '', p .. 'paused', '')
    end
  end
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'live', '0', 'finished', now, 'updated', now)
else
  redis.call('HSET', KEYS[1], 'state', want, 'updated', now)
end
-- Every shard's workers may have work again (a resume), or must hear that
-- there is none (a cancel).
wake_mop(KEYS[6], tonumber(redis.call('HGET', KEYS[1], 'shards')) or 1)
return {'ok', s[1]}
