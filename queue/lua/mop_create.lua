-- Creates a sweep: its hash, the fields of each model (idle, epoch 1,
-- version 0, no shard visited, not paused, no failed attempt), and its
-- place in the index of every sweep and in the set of active ones (which
-- workers iterate; the sweep leaves it in mop_reap once nothing can change
-- it any more).
-- Epochs are numbered from 1 everywhere a person or a file sees them (the
-- models hash, the schedule, the evals list, the results): `format` 2 says
-- so; a sweep without it was recorded with epochs from 0 (jobctl replay
-- refuses it).
-- A unique key (cron): KEYS[10] names the live sweep made with it.  While
-- that sweep is not finished a second create returns it ('duplicate'); once
-- it is done or cancelled (or gone) the key is taken over.  The reaper also
-- frees it when its sweep leaves the active set (queue_mop_reap).
-- Every MOP script takes the same nine keys, so the C side builds them once:
-- KEYS: 1 sweep, 2 models, 3 schedule, 4 evals, 5 sweeps, 6 wake,
--       7 evaling (evaluations in flight), 8 results, 9 active sweeps,
--       and here 10 the unique key and 11 the hash of the sweep it named
--       when the client read it (both absent without a unique key)
-- ARGV: 1 id, 2 dataset, 3 dataset_version, 4 shards K, 5 epochs E,
--       6 models M, 7 sweep spec, 8 the sweep it replays (or ''),
--       9 .. 8+M one spec per model, 9+M .. 8+2M one visit plan per model
--       (a replay: E*K shard numbers of 4 digits each; '' otherwise), then
--       9+2M max_stalls, 10+2M max_attempts, 11+2M backoff base ms,
--       12+2M backoff cap ms, 13+2M the unique key as given (or ''),
--       14+2M the sweep id the client read from it (or ''), 15+2M the
--       mode: 'mop', or 'ddp' / 'ma' (gangs of K ranks, mop_gang.lua),
--       16+2M early stopping ("metric mode grace eta max brackets", or '':
--       prelude's es_params), 17+2M the search kind ('', grid, random or
--       tpe), 18+2M its budget of trials (TPE adds models up to it:
--       mop_add_trial.lua), 19+2M .. 18+3M each model's search point (JSON,
--       or ''), 19+3M the hybrid ('1' on, '0' off: prelude's hybrid_plan)
-- Returns {'created', created_ms} | {'exists'} | {'duplicate', live sweep id}
--       | {'changed'} (the unique key moved since the client read it).
local nshards, nmodels = tonumber(ARGV[4]), tonumber(ARGV[6])
local unique = ARGV[13 + 2 * nmodels] or ''
if unique ~= '' then
  local holder = redis.call('GET', KEYS[10])
  if holder then
    -- The client read the key first and passed that sweep's hash as
    -- KEYS[11]; if the key moved meanwhile, it reads again.
    if holder ~= ARGV[14 + 2 * nmodels] then return {'changed'} end
    local st = redis.call('HGET', KEYS[11], 'state')
    if st and st ~= 'done' and st ~= 'cancelled' then return {'duplicate', holder} end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
local now = int(now_ms())
-- Leftovers of a sweep of the same id whose hash was deleted by hand would
-- otherwise mix old visits into the new schedule.
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[7], KEYS[8])
-- live counts the models not yet done, failed or cancelled: the sweep is
-- done when it reaches 0, without a scan.
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'state', 'running', 'dataset', ARGV[2],
  'dataset_version', ARGV[3], 'shards', ARGV[4], 'epochs', ARGV[5], 'models', ARGV[6],
  'live', ARGV[6], 'spec', ARGV[7], 'replay_of', ARGV[8], 'created', now, 'updated', now, 'finished', '',
  'format', '2', 'max_stalls', ARGV[9 + 2 * nmodels] or '10',
  'max_attempts', ARGV[10 + 2 * nmodels] or '5', 'backoff_base_ms', ARGV[11 + 2 * nmodels] or '1000',
  'backoff_cap_ms', ARGV[12 + 2 * nmodels] or '60000', 'unique', unique,
  'test_attempts', '0', 'test_not_before', '', 'mode', ARGV[15 + 2 * nmodels] or 'mop', 'gangs', '0',
  'es', ARGV[16 + 2 * nmodels] or '', 'search', ARGV[17 + 2 * nmodels] or '',
  'trials', ARGV[18 + 2 * nmodels] or '0', 'initial', ARGV[6], 'hybrid', ARGV[19 + 3 * nmodels] or '0')
for m = 0, nmodels - 1 do
  new_model(KEYS[2], m, nshards, ARGV[9 + m], ARGV[9 + nmodels + m] or '', ARGV[19 + 2 * nmodels + m] or '', 'idle',
    '')
end
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('ZADD', KEYS[9], now, ARGV[1])
if unique ~= '' then redis.call('SET', KEYS[10], ARGV[1]) end
-- Idle workers wait on the wake-up list: one token per shard, so every
-- shard's worker looks at the new sweep at once rather than at its next
-- timeout (up to a second).
wake_mop(KEYS[6], nshards)
return {'created', now}
