-- A worker of a DDP or MA sweep (mode 'ddp' / 'ma', DESIGN.md §6) asks for
-- its part in a gang: W = K ranks, rank r on shard r, that train one model's
-- epoch together.  One call does, in order:
--   1. pick-up: a gang formed earlier named this worker for rank r and the
--      rank is not taken: it is taken now (its deadline starts) and returned;
--   2. readiness: the worker is marked ready until now + ready_ms, with the
--      shards it may read (its own first, then orphans whose worker is gone:
--      MOP's grace rule);
--   3. forming: when fresh ready workers not in a live gang can cover every
--      shard 0..K-1, one worker each (a matching that tries each shard's own
--      workers before stand-ins for orphans) and a model is due, the gang is
--      made at once, all W ranks or
--      none: the model is leased to the gang (token = the base token, its
--      deadline the earliest rank's), each rank gets its worker, its token
--      (base-r) and a deadline to take it by; the caller's rank, if it has
--      one, is picked up as in 1, and the others are woken to take theirs.
-- The model due is the idle one, not paused, past its backoff, at the
-- lowest epoch among the live models that are not paused (round-robin by
-- epoch: every model's epoch e before any model's epoch e+1, so every
-- configuration has early results), the lowest index among equals.  A model
-- waiting out a backoff holds back the next epoch of the others.
-- A rank not taken by its deadline, or not renewed, lets the model's
-- deadline pass: the reaper (mop_reap) frees the model and counts a stall,
-- the same machinery as MOP's leases.
-- In a MOP sweep with the hybrid on (prelude's hybrid_plan) the same
-- script serves the hybrid: pick-up and readiness as above; forming takes
-- the model and W that hybrid_plan names, the caller as rank 0 and the
-- other ready workers by name, W ranks that read all K shards between them.
-- Fields of model m while a gang holds it: <m>.gang = "G W" (G from the
-- sweep's counter `gangs`: the attempt, which names the rendezvous scope),
-- <m>.r<i> = "<taken 0|1> <deadline ms> <token> <worker>".
-- KEYS: the nine sweep keys (mop_create.lua), 10 the ready hash (worker ->
--       "<until ms> <shard>,<shard>...")
-- ARGV: 1 worker, 2 lease_ms, 3 ready_ms, 4 shards the worker may read
--       ("k" or "k,j,..."; its own first), 5 a fresh base token, 6 "<host>
--       <slots>" (how many ranks of one gang its host holds without
--       sharing cores, 0: no limit; for the hybrid) or ''
-- Returns {'rank', m, rank, W, G, token, epoch, version, ckpt, deadline,
--          attempts, dataset, dataset_version, K, spec, mode} (K: the
--          sweep's shards; W = K but in a hybrid gang)
--       | {'ready'} (marked ready; no gang yet) | {'none', sweep_done}
--       | {'waiting'} (no dataset version yet) | {'not_gang'} | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'state', 'shards', 'epochs', 'models', 'live', 'dataset_version', 'dataset',
  'mode', 'hybrid')
if not s[1] then return {'missing'} end
local hybrid = s[8] == 'mop' and s[9] == '1'
if s[8] ~= 'ddp' and s[8] ~= 'ma' and not hybrid then return {'not_gang'} end
local W, nepochs, nmodels = tonumber(s[2]), tonumber(s[3]), tonumber(s[4])
local worker, lease_ms = ARGV[1], tonumber(ARGV[2])
local now = now_ms()

-- The live gangs: who is in one, and this worker's untaken rank.
-- (A hybrid gang has W ranks of its own, from <m>.gang.)
local gang_models, gang_w, busy = {}, {}, {}
each_model(KEYS[2], nmodels, {'state', 'gang'}, function(m, v, i)
  local gw = tonumber(string.match(v[i + 2] or '', '^%d+ (%d+)$'))
  if v[i + 1] == 'leased' and gw then
    gang_models[#gang_models + 1] = m
    gang_w[m] = gw
  end
end)
local function rank_field(m, r) return int(m) .. '.r' .. int(r) end
local function pick_up(m, r, f)
  local p = int(m) .. '.'
  local deadline = int(now + lease_ms)
  local _, _, token, w = string.match(f, '^(%d) (%d+) (%S+) (.*)$')
  redis.call('HSET', KEYS[2], rank_field(m, r), '1 ' .. deadline .. ' ' .. token .. ' ' .. w)
  gang_deadline(KEYS[2], int(m), gang_w[m])
  local g = redis.call('HGET', KEYS[2], p .. 'gang')
  local G = string.match(g, '^(%d+) ')
  local r2 = redis.call('HMGET', KEYS[2], p .. 'epoch', p .. 'version', p .. 'ckpt', p .. 'attempts', p .. 'spec')
  return {'rank', int(m), int(r), int(gang_w[m]), G, token, r2[1], r2[2], r2[3], deadline, r2[4] or '0', s[7] or '',
    s[6], s[2], r2[5] or '', s[8]}
end
local function find_mine()
  for _, m in ipairs(gang_models) do
    for r = 0, gang_w[m] - 1 do
      local f = redis.call('HGET', KEYS[2], rank_field(m, r)) or ''
      local taken, w = string.match(f, '^(%d) %d+ %S+ (.*)$')
      if w then busy[w] = true end
      if w == worker and taken == '0' then return m, r, f end
    end
  end
end
local mm, mr, mf = find_mine()
if mm then return pick_up(mm, mr, mf) end

if s[1] == 'running' and s[6] == '' then return {'waiting'} end
local done = (s[1] == 'done' or s[1] == 'cancelled' or tonumber(s[5]) == 0) and 1 or 0
if s[1] ~= 'running' then
  redis.call('HDEL', KEYS[10], worker)
  return {'none', done}
end
if busy[worker] then return {'none', done} end

-- Readiness, then the ready workers not in a live gang (stale marks go).
local where = (ARGV[6] and ARGV[6] ~= '') and (' @' .. ARGV[6]) or ''
redis.call('HSET', KEYS[10], worker, int(now + tonumber(ARGV[3])) .. ' ' .. ARGV[4] .. where)
local ready, marks = {}, redis.call('HGETALL', KEYS[10])
for i = 1, #marks, 2 do
  local untl, list = string.match(marks[i + 1], '^(%d+) ([^@]*)')
  if not untl or tonumber(untl) < now then
    -- (A hybrid gang's worker keeps its stale mark, and with it its host,
    -- until the gang's commit marks it ready again.)
    if not busy[marks[i]] then redis.call('HDEL', KEYS[10], marks[i]) end
  elseif not busy[marks[i]] then
    local shards = {}
    for k in string.gmatch(list, '%d+') do shards[#shards + 1] = tonumber(k) end
    ready[#ready + 1] = {w = marks[i], shards = shards}
  end
end
local by_rank, best = {}, nil
if hybrid then
  local gw, ready
  best, gw, ready = hybrid_plan(KEYS[1], KEYS[2], KEYS[10], worker, now)
  if not best then return {'ready'} end
  W = gw
  for r = 0, W - 1 do by_rank[r] = ready[r + 1] end
else
  -- Every shard gets a distinct ready worker that may read it, or no gang is
  -- made: a matching (augmenting paths), trying each shard's own workers
  -- before stand-ins, so a spare worker of shard 0 can stand in for a lost
  -- shard 1 while shard 0's other worker keeps it.
  local cands = {}
  for k = 0, W - 1 do
    local own, other = {}, {}
    for _, e in ipairs(ready) do
      for j, sk in ipairs(e.shards) do
        if sk == k then
          if j == 1 then own[#own + 1] = e.w else other[#other + 1] = e.w end
          break
        end
      end
    end
    for _, w in ipairs(other) do own[#own + 1] = w end
    cands[k] = own
  end
  local by_shard, shard_of = {}, {}
  local function assign(k, seen)
    for _, w in ipairs(cands[k]) do
      if not seen[w] then
        seen[w] = true
        if shard_of[w] == nil or assign(shard_of[w], seen) then
          by_shard[k], shard_of[w] = w, k
          return true
        end
      end
    end
    return false
  end
  for k = 0, W - 1 do
    if not assign(k, {}) then return {'ready'} end
  end

  -- The model due: round-robin by epoch.
  local emin
  each_model(KEYS[2], nmodels, {'state', 'epoch', 'paused', 'not_before'}, function(m, v, i)
    local st, epoch = v[i + 1], tonumber(v[i + 2])
    if (st == 'idle' or st == 'leased') and v[i + 3] ~= '1' and epoch <= nepochs then
      if not emin or epoch < emin then emin, best = epoch, nil end
      if epoch == emin and not best and st == 'idle' and now >= (tonumber(v[i + 4]) or 0) then best = m end
    end
  end)
  if not best then return {'none', done} end
  by_rank = by_shard
end

local G = redis.call('HINCRBY', KEYS[1], 'gangs', 1)
local p = int(best) .. '.'
local deadline = int(now + lease_ms)
local fields = {p .. 'state', 'leased', p .. 'token', ARGV[5], p .. 'worker', by_rank[0], p .. 'shard', '',
  p .. 'deadline', deadline, p .. 'gang', int(G) .. ' ' .. int(W), p .. 'progress', ''}
for r = 0, W - 1 do
  fields[#fields + 1] = rank_field(best, r)
  fields[#fields + 1] = '0 ' .. deadline .. ' ' .. ARGV[5] .. '-' .. int(r) .. ' ' .. by_rank[r]
  -- (A hybrid gang's marks stay: its workers are busy while it lives, and
  -- the marks keep their hosts for the next epoch's gang.)
  if not hybrid then redis.call('HDEL', KEYS[10], by_rank[r]) end
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('HSET', KEYS[1], 'updated', int(now))
wake_mop(KEYS[6], W)
gang_models = {best}
gang_w[best] = W
mm, mr, mf = find_mine()
if mm then return pick_up(mm, mr, mf) end
return {'ready'}
