-- Shared by every queue script (prepended at build time).
--
-- Time comes from the server (TIME), never from a client clock.  Numbers are
-- formatted with %d before they reach Redis: Lua's default conversion keeps
-- only 14 significant digits, which would corrupt wait scores.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(x)
  return string.format('%d', x)
end

-- Position in a wait set: larger priority first, then FIFO by job id.
-- |priority| <= 2^20 and id mod 2^32 keep the score an exact double.
local function wait_score(priority, id)
  return int(-tonumber(priority) * 4294967296 + (tonumber(id) % 4294967296))
end

local function wake(key)
  redis.call('LPUSH', key, '1')
  redis.call('LTRIM', key, 0, 63)
end

-- MOP's wake-up list: n tokens (one per worker that may have work now: K for
-- a new or resumed sweep, 1 for a commit), kept to 16, because tokens that
-- nobody waited for make the next idle worker retry once per token.
local function wake_mop(key, n)
  for _ = 1, math.min(n, 16) do
    redis.call('LPUSH', key, '1')
  end
  redis.call('LTRIM', key, 0, 15)
end

-- A model waiting at rung epoch e (early stopping) whose evaluation will
-- never be recorded (failed, given up, nothing to evaluate) goes on
-- without a decision, noted: no rule can judge it, and waiting would hold
-- it for ever.
local function es_release(models_key, m, e, why)
  local w = redis.call('HMGET', models_key, m .. '.state', m .. '.rung')
  if w[1] ~= 'rung' or w[2] ~= tostring(e) then return end
  redis.call('HSET', models_key, m .. '.state', 'idle', m .. '.rung_note',
    string.format('continued at epoch %s without a decision: %s', e, why))
end

-- Returns an evaluation ("m epoch version") whose lease expired (its worker
-- died or hung) to the head of the evals list (it was the oldest), unless
-- it has stalled more than max_stalls times: an epoch whose evaluation kills
-- every worker that takes it is given up then, with the reason in the models
-- hash (<m>.eval_error.<e>), so it cannot keep its sweep active for ever.
-- A stall is not an attempt (as for queue jobs): failed attempts are counted
-- by mop_eval_end.  Returns true when it was requeued.
local function stall_eval(models_key, evals_key, entry, max_stalls)
  local m, e = string.match(entry, '^(%d+) (%d+) ')
  if not m then return false end
  local stalls = redis.call('HINCRBY', models_key, m .. '.eval_stalls.' .. e, 1)
  if stalls > max_stalls then
    local why = string.format('evaluation given up: it stalled %d times (its worker died or lost the lease)', stalls)
    redis.call('HSET', models_key, m .. '.eval_error.' .. e, why)
    es_release(models_key, m, e, why)
    return false
  end
  redis.call('LPUSH', evals_key, entry)
  return true
end

-- Frees a unique key only if it still names this job.
local function free_unique(ukey, unique, id)
  if unique and unique ~= '' and redis.call('GET', ukey) == id then
    redis.call('DEL', ukey)
  end
end

-- Moves a job to its queue's dead-letter set with a reason.
local function bury(jkey, deadkey, ukey, id, now, reason)
  redis.call('HSET', jkey, 'state', 'dead', 'dead_reason', reason, 'finished_ms', int(now))
  redis.call('ZADD', deadkey, int(now), id)
  free_unique(ukey, redis.call('HGET', jkey, 'unique'), id)
end

local function has_dependents(jkey)
  return redis.call('HGET', jkey, 'has_dependents') == '1' and 1 or 0
end

-- The wait after the n-th failed attempt of a model's visit, evaluation or
-- test scoring: min(cap, base * 2^(n-1)) * factor, factor in [0.5, 1] drawn
-- by the client (scripts must be deterministic), as for queue jobs.
local function backoff_ms(n, base, cap, factor)
  return math.floor(math.min(cap, base * 2 ^ (n - 1)) * factor)
end

-- A sweep's retry settings (mop_create), with the defaults of sweeps made
-- before they existed.
local function retry_settings(sweep_key)
  local r = redis.call('HMGET', sweep_key, 'max_attempts', 'backoff_base_ms', 'backoff_cap_ms')
  return tonumber(r[1]) or 5, tonumber(r[2]) or 1000, tonumber(r[3]) or 60000
end

-- An evaluation entry is "m epoch version", followed by " due_ms" while it
-- waits out the backoff of a failed attempt.
local function eval_due(entry)
  return tonumber(string.match(entry, '^%d+ %d+ %d+ (%d+)$') or '0')
end

-- Calls visit(m, v, i) for every model m < n of a sweep's models hash, where
-- v[i + j] is field names[j] of model m ("<m>.<name>"; false when absent).
-- HMGET in chunks of at most 7000 fields: unpack() takes about 8000 values
-- (LUAI_MAXCSTACK), and mop_lease and mop_reap scan every model.
local function each_model(models_key, n, names, visit)
  local w = #names
  local chunk = math.floor(7000 / w)
  for first = 0, n - 1, chunk do
    local last = math.min(first + chunk, n) - 1
    local f = {}
    for m = first, last do
      local p = int(m) .. '.'
      for j = 1, w do
        f[#f + 1] = p .. names[j]
      end
    end
    local v = redis.call('HMGET', models_key, unpack(f))
    for m = first, last do
      visit(m, v, (m - first) * w)
    end
  end
end

-- A gang's rank r of model m (mop_gang.lua): "<taken> <deadline> <token>
-- <worker>" in field <m>.r<r>; returns taken ('0'|'1'), deadline, token,
-- worker (all nil when absent).
local function gang_rank(models_key, m, r)
  local f = redis.call('HGET', models_key, m .. '.r' .. int(r)) or ''
  local taken, deadline, token, w = string.match(f, '^(%d) (%d+) (%S+) (.*)$')
  return taken, tonumber(deadline), token, w
end

-- W when gang G still holds model m and rank r is taken under token; nil
-- otherwise.  The model's deadline is the earliest rank's: past it the whole
-- gang is lost, as a MOP lease is past its deadline.
local function gang_holds(models_key, m, G, r, token, now)
  local p = m .. '.'
  local f = redis.call('HMGET', models_key, p .. 'state', p .. 'gang', p .. 'deadline')
  if f[1] ~= 'leased' then return nil end
  local g, W = string.match(f[2] or '', '^(%d+) (%d+)$')
  if g ~= G or now > (tonumber(f[3]) or 0) then return nil end
  local taken, _, tok = gang_rank(models_key, m, r)
  if taken ~= '1' or tok ~= token then return nil end
  return tonumber(W)
end

-- The model's deadline becomes its gang's earliest rank deadline.
local function gang_deadline(models_key, m, W)
  local d
  for r = 0, W - 1 do
    local _, dl = gang_rank(models_key, m, r)
    if dl and (not d or dl < d) then d = dl end
  end
  redis.call('HSET', models_key, m .. '.deadline', int(d or 0))
end

-- Whether model m's gang is whole: every rank taken.  A gang that ends
-- before it was (a worker named for a rank was busy elsewhere, or gone)
-- never trained: its end is not the model's stall.
local function gang_whole(models_key, m)
  local W = tonumber(string.match(redis.call('HGET', models_key, m .. '.gang') or '', '^%d+ (%d+)$'))
  if not W then return true end
  for r = 0, W - 1 do
    if gang_rank(models_key, m, r) ~= '1' then return false end
  end
  return true
end

-- Forgets model m's gang (its rank fields and <m>.gang), when the gang ends
-- in any way: commit, abort, failure, reap.
local function gang_clear(models_key, m)
  local W = tonumber(string.match(redis.call('HGET', models_key, m .. '.gang') or '', '^%d+ (%d+)$'))
  if not W then return end
  for r = 0, W - 1 do redis.call('HDEL', models_key, m .. '.r' .. int(r)) end
  redis.call('HSET', models_key, m .. '.gang', '')
end

-- The hybrid (DESIGN.md §6, docs/search.md): in a MOP sweep with `hybrid`
-- on, when fewer models can train than there are workers (the end of a
-- sweep, or after early stopping), idle workers form a data-parallel gang
-- for one of the models left, for one epoch: W ranks, rank r reading
-- shards r, r+W, ..., each step a global batch of the model's own size.
-- Returns the model due, W and the ready workers (the caller first, the
-- others by name), or nil.  mop_lease leaves that model to the gang and
-- mop_gang forms it: both ask here, so they agree.
-- Due: the sweep runs; fewer runnable models (idle, leased or at a rung,
-- not paused, epochs left) than workers (the ready ones, the caller
-- among them, and those holding a lease or a rank); at least two ready;
-- a model idle at an epoch boundary (no shard visited: a model switches
-- only there), not paused, past its backoff, the least progress first,
-- the lowest index among equals.  W: 2 <= W <= K, dividing the model's
-- batch, at most the idle workers less one for each other idle model (MOP
-- keeps a worker for each), and no more from one host than its mark's
-- slots (its cores over a worker's threads: ranks of CPU workers sharing
-- cores would only take turns); the fewest shards per rank (ceil(K/W))
-- and, among those, the fewest workers.  A replay (its plans record the
-- original's gangs: 'h' and W in place of a shard) forms exactly the
-- gangs of the original, at the epochs it had them, and no others.
-- The fields of a model that hybrid_plan reads, in this order; a caller's
-- visit(m, v, i) (mop_lease.lua) sees each model's row of them during the
-- same scan, so a lease that asks for a plan reads the models once.
local MODEL_SCAN_FIELDS = {'state', 'epoch', 'visited', 'paused', 'not_before', 'plan', 'gang', 'worker'}

local function hybrid_plan(sweep_key, models_key, ready_key, caller, now, visit)
  local s = redis.call('HMGET', sweep_key, 'state', 'shards', 'epochs', 'models', 'mode', 'hybrid', 'replay_of')
  if s[1] ~= 'running' or s[5] ~= 'mop' or s[6] ~= '1' then return nil end
  local replay = s[7] and s[7] ~= ''
  -- No other worker marked ready: no gang can form, and the models need
  -- no second scan (the lease script asks on every lease).
  local marked = redis.call('HLEN', ready_key) - redis.call('HEXISTS', ready_key, caller)
  if marked < 1 then return nil end
  local K, nepochs, nmodels = tonumber(s[2]), tonumber(s[3]), tonumber(s[4])
  local busy, nbusy, runnable, idle = {}, 0, 0, 0
  local best, best_progress, best_w
  each_model(models_key, nmodels, MODEL_SCAN_FIELDS,
    function(m, v, i)
      if visit then visit(m, v, i) end
      local st, epoch = v[i + 1], tonumber(v[i + 2])
      if st == 'leased' then
        local W = tonumber(string.match(v[i + 7] or '', '^%d+ (%d+)$'))
        if W then
          for r = 0, W - 1 do
            local _, _, _, w = gang_rank(models_key, int(m), r)
            if w then busy[w] = true end
          end
          nbusy = nbusy + W
        else
          if v[i + 8] and v[i + 8] ~= '' then busy[v[i + 8]] = true end
          nbusy = nbusy + 1
        end
      end
      if v[i + 4] == '1' or not epoch or epoch > nepochs then return end
      if st == 'idle' or st == 'leased' or st == 'rung' then runnable = runnable + 1 end
      if st ~= 'idle' or now < (tonumber(v[i + 5]) or 0) then return end
      idle = idle + 1
      if string.find(v[i + 3] or '', '1', 1, true) then return end
      local progress, w = (epoch - 1) * K, nil
      local plan = v[i + 6] or ''
      if replay then
        if string.sub(plan, progress * 4 + 1, progress * 4 + 1) ~= 'h' then return end
        w = tonumber(string.sub(plan, progress * 4 + 2, progress * 4 + 4))
      end
      if not best or progress < best_progress then best, best_progress, best_w = m, progress, w end
    end)
  if not best then return nil end
  -- The idle workers: fresh marks not in a live gang or lease, the caller
  -- first; each mark may say its host and slots (mop_gang.lua's ARGV[6]).
  local others, info, marks = {}, {}, redis.call('HGETALL', ready_key)
  for i = 1, #marks, 2 do
    local untl = tonumber(string.match(marks[i + 1], '^(%d+) '))
    local host, slots = string.match(marks[i + 1], ' @(%S+) (%d+)$')
    info[marks[i]] = {host = host, slots = tonumber(slots)}
    if marks[i] ~= caller and untl and untl >= now and not busy[marks[i]] then others[#others + 1] = marks[i] end
  end
  table.sort(others)
  local idle_workers = 1 + #others
  -- Those a gang may take: no host gives more ranks than its slots (CPU
  -- workers sharing a host's cores would only take turns); a replay takes
  -- what its plan says wherever it runs.
  local ready, used = {}, {}
  local function take(w)
    local h = info[w] or {}
    if not replay and h.host and h.slots and h.slots > 0 then
      if (used[h.host] or 0) >= h.slots then return end
      used[h.host] = (used[h.host] or 0) + 1
    end
    ready[#ready + 1] = w
  end
  take(caller)
  for _, w in ipairs(others) do take(w) end
  local W
  if replay then
    W = best_w
    if not W or W < 2 or #ready < W then return nil end
    return best, W, ready
  end
  if idle_workers < 2 or runnable >= idle_workers + nbusy then return nil end
  local ok, spec = pcall(cjson.decode, redis.call('HGET', models_key, int(best) .. '.spec') or '')
  local batch = ok and type(spec) == 'table' and type(spec.train) == 'table' and tonumber(spec.train.batch) or 0
  local cap, fewest = math.min(#ready, idle_workers - (idle - 1), K), nil
  for w = 2, cap do
    if batch >= w and batch % w == 0 and (not fewest or math.ceil(K / w) < fewest) then
      W, fewest = w, math.ceil(K / w)
    end
  end
  if not W then return nil end
  return best, W, ready
end

-- A model of the sweep finished (done, stopped, failed or cancelled): live
-- goes down, and at 0 the sweep is done (unless it was cancelled, which
-- stays), except while a TPE search still has trials to propose: its next
-- proposal adds a live model (mop_add_trial.lua).  Returns 1 when no model
-- is live and none will be added.
local function model_finished(sweep_key, sweep_state, now)
  if redis.call('HINCRBY', sweep_key, 'live', -1) ~= 0 then return 0 end
  local f = redis.call('HMGET', sweep_key, 'search', 'models', 'trials')
  if f[1] == 'tpe' and tonumber(f[2]) < (tonumber(f[3]) or 0) then return 0 end
  if sweep_state ~= 'cancelled' then redis.call('HSET', sweep_key, 'state', 'done', 'finished', int(now)) end
  return 1
end

-- The fields of a new model m (mop_create.lua, mop_add_trial.lua): at epoch
-- 1, version 0, no shard visited; state idle, or failed with its reason
-- (a TPE proposal training would refuse); its search point (JSON, or '').
local function new_model(models_key, m, nshards, spec, plan, point, state, reason)
  local p = int(m) .. '.'
  redis.call('HSET', models_key, p .. 'state', state, p .. 'epoch', '1', p .. 'visited', string.rep('0', nshards),
    p .. 'version', '0', p .. 'ckpt', '', p .. 'token', '', p .. 'worker', '', p .. 'shard', '',
    p .. 'deadline', '', p .. 'spec', spec, p .. 'reason', reason, p .. 'stalls', '0',
    p .. 'attempts', '0', p .. 'not_before', '', p .. 'error', '',
    p .. 'commit', '', p .. 'plan', plan, p .. 'paused', '', p .. 'rung', '', p .. 'point', point)
end

-- Ends a model for good (prefix p, "<m>.") in state (failed, stopped),
-- with its reason: it takes no more leases and counts as finished
-- (model_finished).  Returns 1 when the sweep has nothing live left.
local function finish_model(sweep_key, models_key, p, state, reason, sweep_state, now)
  redis.call('HSET', models_key, p .. 'state', state, p .. 'reason', reason, p .. 'not_before', '')
  return model_finished(sweep_key, sweep_state, now)
end

local function fail_model(sweep_key, models_key, p, reason, sweep_state, now)
  return finish_model(sweep_key, models_key, p, 'failed', reason, sweep_state, now)
end

-- Early stopping (ASHA: docs/search.md).  The sweep's `es` is '' (none) or
-- "metric mode grace eta max brackets": model m is in bracket m mod
-- brackets (round-robin), and bracket b's rungs are the epochs
-- grace*eta^(b+k), k = 0, 1, ..., below max; a model ends at epoch max.
local function es_params(sweep_key)
  local es = redis.call('HGET', sweep_key, 'es') or ''
  local metric, mode, grace, eta, max, brackets = string.match(es, '^(%S+) (%a+) (%d+) (%d+) (%d+) (%d+)$')
  if not metric then return nil end
  return {metric = metric, maximize = mode == 'max', grace = tonumber(grace), eta = tonumber(eta),
          max = tonumber(max), brackets = tonumber(brackets)}
end

local function es_bracket(es, m)
  return tonumber(m) % es.brackets
end

-- The rung (0 first) that epoch e is for model m, or nil.
local function es_rung(es, m, e)
  local milestone = es.grace
  for _ = 1, es_bracket(es, m) do milestone = milestone * es.eta end
  local k = 0
  while milestone < es.max do
    if milestone == e then return k end
    milestone, k = milestone * es.eta, k + 1
  end
  return nil
end

-- Model m has committed epoch e: its state and the epoch it goes on with.
-- 'done' after its last epoch (the sweep's, or early stopping's max);
-- 'rung' at a rung, where it waits for that epoch's evaluation and the
-- rule (mop_result.lua); 'idle' otherwise.
local function epoch_end(es, m, e, nepochs)
  local last = nepochs
  if es and es.max < last then last = es.max end
  if e >= last then return 'done', e end
  if es and es_rung(es, m, e) then return 'rung', e + 1 end
  return 'idle', e + 1
end

-- numpy's percentile (method 'linear', as Ray Tune's ASHA calls it) of the
-- values, q in [0, 1]; nil when there are none.
local function es_percentile(values, q)
  if #values == 0 then return nil end
  table.sort(values)
  local rank = q * (#values - 1)
  local lo = math.floor(rank)
  local t = rank - lo
  local a, b = values[lo + 1], values[math.min(lo + 2, #values)]
  if t >= 0.5 then return b - (b - a) * (1 - t) end
  return a + (b - a) * t
end

-- The ASHA rule for model m waiting at rung epoch e, whose evaluation
-- recorded metrics (JSON): it continues when its metric is at least the
-- (1 - 1/eta) percentile of the metrics recorded at that rung of its
-- bracket before it (none: it continues), else it is stopped; either way
-- its metric is recorded there.  A metric the evaluation did not give
-- lets the model continue, noted.  Returns 'continue' or 'stopped', and the
-- line that says why.
local function es_decide(sweep_key, models_key, es, m, e, metrics_json, sweep_state, now)
  local p = m .. '.'
  local ok, metrics = pcall(cjson.decode, metrics_json)
  local raw = ok and type(metrics) == 'table' and tonumber(metrics[es.metric]) or nil
  local b, k = es_bracket(es, m), es_rung(es, m, e)
  if not raw then
    local why = string.format('continued at rung %d (epoch %d) without a decision: the evaluation gave no %s', k, e,
      es.metric)
    redis.call('HSET', models_key, p .. 'state', 'idle', p .. 'rung_note', why)
    return 'continue', why
  end
  local v = es.maximize and raw or -raw
  local field = string.format('asha.%d.%d', b, e)
  local rec = redis.call('HGET', models_key, field) or ''
  local values = {}
  for x in string.gmatch(rec, '%S+') do values[#values + 1] = tonumber(x) end
  local n = #values
  local cutoff = es_percentile(values, ((1 - 1 / es.eta) * 100) / 100)
  redis.call('HSET', models_key, field, (rec == '' and '' or rec .. ' ') .. string.format('%.17g', v))
  if cutoff and v < cutoff then
    local why = string.format('stopped by ASHA at epoch %d (rung %d of bracket %d): %s %.6g is %s the cutoff %.6g ' ..
      'of the top 1/%d of the %d model%s recorded there before it', e, k, b, es.metric, raw,
      es.maximize and 'below' or 'above', es.maximize and cutoff or -cutoff, es.eta, n, n == 1 and '' or 's')
    redis.call('HSET', models_key, p .. 'rung_note', why)
    finish_model(sweep_key, models_key, p, 'stopped', why, sweep_state, now)
    return 'stopped', why
  end
  local why = string.format('continued at rung %d (epoch %d): %s %.6g%s', k, e, es.metric, raw,
    cutoff and string.format(' against the cutoff %.6g of %d model%s', es.maximize and cutoff or -cutoff, n,
      n == 1 and '' or 's') or ' (the first at this rung)')
  redis.call('HSET', models_key, p .. 'state', 'idle', p .. 'rung_note', why)
  return 'continue', why
end
