-- Returns every model whose lease deadline has passed to idle, at its last
-- committed version (the visit is lost, not the model), and counts a stall
-- on it.  A gang's model (mop_gang.lua) expires when any rank's deadline
-- passed, and its gang is forgotten.  One script re-reads every deadline, so any number of workers may
-- run it at once without freeing a lease twice or one that was renewed.
-- A model that has stalled more than the sweep's max_stalls times (default
-- 10) fails instead, with the reason: a model that kills every worker that
-- takes it (out of memory, a crash) must not hold the sweep forever.
-- Evaluations in flight whose deadline passed go back to the head of the
-- evals list (they were the oldest), so another worker takes them next;
-- after more than max_stalls stalls an epoch's evaluation is given up
-- (stall_eval in the prelude).
-- Last, a finished sweep leaves the active set that workers iterate:
-- cancelled, or done with its test scoring recorded, and no evaluation
-- waiting or in flight.  Nothing can change such a sweep any more (no
-- model is live, so nothing commits, and only commits queue evaluations),
-- so the rule is checked here, by whichever worker reaps next, rather than
-- in every script that may complete it.  A sweep whose hash is gone leaves
-- the set too.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models, 4 evals,
--       6 wake, 7 evaling, 9 active
-- ARGV: 1 the sweep id
-- Returns {'reaped', models, evaluations, left the active set 0|1} | {'missing'}.
local sw = redis.call('HMGET', KEYS[1], 'models', 'max_stalls', 'state', 'test')
local nmodels = tonumber(sw[1])
if not nmodels then
  redis.call('ZREM', KEYS[9], ARGV[1])
  return {'missing'}
end
local max_stalls = tonumber(sw[2]) or 10
local now = now_ms()
local n = 0
each_model(KEYS[2], nmodels, {'state', 'deadline'}, function(m, v, i)
  if v[i + 1] == 'leased' and now > tonumber(v[i + 2]) then
    local p = int(m) .. '.'
    local whole = gang_whole(KEYS[2], int(m))
    gang_clear(KEYS[2], int(m))
    redis.call('HSET', KEYS[2], p .. 'state', 'idle', p .. 'token', '', p .. 'shard', '',
      p .. 'deadline', '', p .. 'progress', '')
    -- A gang some rank never joined did not train: not the model's stall.
    local stalls = whole and redis.call('HINCRBY', KEYS[2], p .. 'stalls', 1) or 0
    if stalls > max_stalls then
      redis.call('HSET', KEYS[2], p .. 'state', 'failed', p .. 'reason',
        string.format('stalled %d times: every worker that took it died or lost its lease', stalls))
      model_finished(KEYS[1], sw[3], now)
    end
    n = n + 1
  end
end)

-- Evaluations in flight are few (at most one per worker): read them all.
local ne = 0
local inflight = redis.call('HGETALL', KEYS[7])
for i = 1, #inflight, 2 do
  local entry, deadline = string.match(inflight[i + 1], '^(%d+ %d+ %d+) (%d+)')
  if not entry or now > tonumber(deadline) then
    redis.call('HDEL', KEYS[7], inflight[i])
    if entry then
      stall_eval(KEYS[2], KEYS[4], entry, max_stalls)
    end
    ne = ne + 1
  end
end
if n + ne > 0 then
  redis.call('HSET', KEYS[1], 'updated', int(now))
  wake_mop(KEYS[6], 1)
end

local left = 0
if (sw[3] == 'cancelled' or (sw[3] == 'done' and sw[4] and sw[4] ~= '')) and
    redis.call('LLEN', KEYS[4]) == 0 and redis.call('HLEN', KEYS[7]) == 0 then
  left = redis.call('ZREM', KEYS[9], ARGV[1])
end
return {'reaped', n, ne, left}
