-- Leases a model to a worker that serves shard k and is free.
-- Eligible: idle, not paused (jobctl pause S/m), not waiting out the
-- backoff of a failed attempt (not_before), shard k not yet visited in its
-- epoch.  Among those the one with the least progress ((epoch-1)*K + shards
-- visited this epoch; epochs count from 1) wins, the lowest index among equals: models that fell
-- behind catch up, which shortens the sweep's tail, and the choice depends
-- only on the state, so a replay with the same commit order picks the same.
-- A replay's model has a plan (the shards of its original visits, in order,
-- 4 digits each): it is eligible for shard k only when its next planned
-- shard is k, so it sees its shards in the original order and its
-- checkpoints come out the same.
-- The hybrid (prelude's hybrid_plan): the model a gang of idle workers is
-- due to take is not leased here (the plan's scan of the models is also
-- this script's: one pass over them either way), and a worker with nothing to visit in a
-- sweep with the hybrid on hears 'gang', so that it marks itself ready
-- (mop_gang.lua); a replay's model whose plan has a gang next waits for it.
-- Expired leases are not freed here: only mop_reap does that, in one place.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models; and
--       10 the ready hash (mop_gang.lua)
-- ARGV: 1 shard k, 2 worker, 3 lease_ms, 4 token
-- Returns {'leased', m, epoch, version, ckpt, deadline, sweep_done, failed attempts so far,
--          dataset, dataset_version, K, the model's spec}
--       | {'none', sweep_done} | {'waiting'} | {'bad_shard', K} | {'missing'}
--       | {'gang'} (a DDP or MA sweep: its models go to gangs, mop_gang.lua;
--         or a MOP sweep with the hybrid on and nothing to visit here).
-- The lease carries what the visit needs (the dataset, K, the spec), so a
-- worker asks nothing more before it starts training.
local s = redis.call('HMGET', KEYS[1], 'state', 'shards', 'epochs', 'models', 'live', 'dataset_version', 'dataset',
  'mode')
if not s[1] then return {'missing'} end
if s[8] == 'ddp' or s[8] == 'ma' then return {'gang'} end
-- A sweep created while its dataset was still loading has no version yet:
-- nothing to train until a worker has seen the dataset ready and pinned it.
if s[1] == 'running' and s[6] == '' then return {'waiting'} end
local nshards, nepochs, nmodels = tonumber(s[2]), tonumber(s[3]), tonumber(s[4])
local k = tonumber(ARGV[1])
if k < 0 or k >= nshards then return {'bad_shard', nshards} end
local done = (s[1] == 'done' or s[1] == 'cancelled' or tonumber(s[5]) == 0) and 1 or 0
if s[1] ~= 'running' then return {'none', done} end

-- The two eligible models with the least progress (lowest index among
-- equals): the first, unless the hybrid gives it to a gang.  One scan of
-- the models: hybrid_plan's own when it scans, else this script's.
local first, first_p, second, second_p
local scanned = 0
local now = now_ms()
local function consider(m, v, i)
  scanned = scanned + 1
  local st, epoch, visited, plan = v[i + 1], tonumber(v[i + 2]), v[i + 3], v[i + 6]
  if st ~= 'idle' or v[i + 4] == '1' or not epoch or epoch > nepochs or string.sub(visited, k + 1, k + 1) ~= '0' or
      now < (tonumber(v[i + 5]) or 0) then
    return
  end
  local _, visits = string.gsub(visited, '1', '')
  local progress = (epoch - 1) * nshards + visits
  if plan and plan ~= '' and tonumber(string.sub(plan, progress * 4 + 1, progress * 4 + 4)) ~= k then return end
  if not first or progress < first_p then
    second, second_p, first, first_p = first, first_p, m, progress
  elseif not second or progress < second_p then
    second, second_p = m, progress
  end
end
local hybrid = redis.call('HGET', KEYS[1], 'hybrid') == '1'
local gang_due = hybrid and hybrid_plan(KEYS[1], KEYS[2], KEYS[10], ARGV[2], now, consider)
if scanned == 0 then each_model(KEYS[2], nmodels, MODEL_SCAN_FIELDS, consider) end
local best = first
if best and best == gang_due then best = second end
if not best then return hybrid and {'gang'} or {'none', done} end

local deadline = int(now + tonumber(ARGV[3]))
local p = int(best) .. '.'
redis.call('HSET', KEYS[2], p .. 'state', 'leased', p .. 'token', ARGV[4], p .. 'worker', ARGV[2],
  p .. 'shard', int(k), p .. 'deadline', deadline)
local r = redis.call('HMGET', KEYS[2], p .. 'epoch', p .. 'version', p .. 'ckpt', p .. 'attempts', p .. 'spec')
return {'leased', int(best), r[1], r[2], r[3], deadline, 0, r[4] or '0', s[7] or '', s[6], s[2], r[5] or ''}
