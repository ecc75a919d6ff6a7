-- Creates a sweep: its hash, the fields of each model (idle, epoch 0,
-- version 0, no shard visited, not paused), and its place in the index of
-- every sweep and in the set of active ones (which workers iterate; the
-- sweep leaves it in mop_reap once nothing can change it any more).
-- Every MOP script takes the same nine keys, so the C side builds them once:
-- KEYS: 1 sweep, 2 models, 3 schedule, 4 evals, 5 sweeps, 6 wake,
--       7 evaling (evaluations in flight), 8 results, 9 active sweeps
-- ARGV: 1 id, 2 dataset, 3 dataset_version, 4 shards K, 5 epochs E,
--       6 models M, 7 sweep spec, 8 the sweep it replays (or ''),
--       9 .. 8+M one spec per model, then optionally 9+M .. 8+2M one visit
--       plan per model (a replay: E*K shard numbers of 4 digits each)
-- Returns {'created', created_ms} | {'exists'}.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
local now = int(now_ms())
local nshards, nmodels = tonumber(ARGV[4]), tonumber(ARGV[6])
-- Leftovers of a sweep of the same id whose hash was deleted by hand would
-- otherwise mix old visits into the new schedule.
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[7], KEYS[8])
-- live counts the models not yet done, failed or cancelled: the sweep is
-- done when it reaches 0, without a scan.
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'state', 'running', 'dataset', ARGV[2],
  'dataset_version', ARGV[3], 'shards', ARGV[4], 'epochs', ARGV[5], 'models', ARGV[6],
  'live', ARGV[6], 'spec', ARGV[7], 'replay_of', ARGV[8], 'created', now, 'updated', now, 'finished', '',
  'max_stalls', ARGV[9 + 2 * nmodels] or '10')
local zeros = string.rep('0', nshards)
for m = 0, nmodels - 1 do
  local p = int(m) .. '.'
  redis.call('HSET', KEYS[2], p .. 'state', 'idle', p .. 'epoch', '0', p .. 'visited', zeros,
    p .. 'version', '0', p .. 'ckpt', '', p .. 'token', '', p .. 'worker', '', p .. 'shard', '',
    p .. 'deadline', '', p .. 'spec', ARGV[9 + m], p .. 'reason', '', p .. 'stalls', '0',
    p .. 'commit', '', p .. 'plan', ARGV[9 + nmodels + m] or '', p .. 'paused', '')
end
redis.call('ZADD', KEYS[5], now, ARGV[1])
redis.call('ZADD', KEYS[9], now, ARGV[1])
-- Idle workers wait on the wake-up list: one token per shard, so every
-- shard's worker looks at the new sweep at once rather than at its next
-- timeout (up to a second).
wake_mop(KEYS[6], nshards)
return {'created', now}
