-- Rank 0 of a gang publishes the checkpoint of the epoch the gang trained
-- (mop_commit.lua's rules for a gang): only while gang G holds the model,
-- rank 0's token matches and no rank's deadline has passed.  Every shard is
-- marked visited at once (each rank read its own), the version goes up by
-- one, one schedule entry per rank ("m epoch r version worker_r", in rank
-- order; a hybrid gang of W ranks in a MOP sweep: one per shard k, "m epoch
-- k version worker g<W>", worker the one of rank k mod W, which read it:
-- the record replay follows), each rank's metrics go to the results as "<m>.<epoch>.train.<r>",
-- the epoch goes to the evaluation list, and the model is idle at the next
-- epoch (or done after the last; or waiting at a rung of early stopping:
-- prelude's epoch_end, as in mop_commit).  The gang is forgotten and <m>.gang_done
-- names it, so its other ranks' renewals hear 'done', not 'lost'.  A commit
-- resent after a lost reply hears the same answer (the receipt, as in
-- mop_commit).  A hybrid gang's workers are marked ready again (for
-- HYBRID_REMARK_MS, a ready mark's life in worker_mop_gang.c): they are
-- free in a moment, and the next epoch's gang must not lose them to the
-- first MOP lease that comes (the ready hash is KEYS[1] .. ':ready', the
-- key mop_gang.lua is given; the same slot).
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models,
--       3 schedule, 4 evals, 6 wake, 8 results
-- ARGV: 1 model m, 2 gang G, 3 rank 0's token, 4 checkpoint path,
--       5 .. 4+W the ranks' metrics (JSON; '' for none)
-- Returns {'committed', epoch_done, model_done, version, superseded}
--       | {'lost'} | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'shards', 'epochs', 'live', 'state', 'mode')
if not s[1] then return {'missing'} end
local nshards, nepochs = tonumber(s[1]), tonumber(s[2])
local m, G, token, path = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local p = m .. '.'
local receipt = redis.call('HGET', KEYS[2], p .. 'commit') or ''
local rt, red, rmd, rver, rsup = string.match(receipt, '^(%S+) (%d) (%d) (%d+) (.*)$')
if rt == token then return {'committed', tonumber(red), tonumber(rmd), rver, rsup} end
local now = now_ms()
local W = gang_holds(KEYS[2], m, G, 0, token, now)
if not W then return {'lost'} end

local f = redis.call('HMGET', KEYS[2], p .. 'epoch', p .. 'version', p .. 'ckpt')
local epoch, version, superseded = tonumber(f[1]), tonumber(f[2]) + 1, f[3]
local hybrid = s[5] == 'mop'
local HYBRID_REMARK_MS = 3000
for k = 0, hybrid and nshards - 1 or -1 do
  local _, _, _, w = gang_rank(KEYS[2], m, k % W)
  redis.call('RPUSH', KEYS[3], string.format('%s %d %d %d %s g%d', m, epoch, k, version, w or '', W))
end
for r = 0, W - 1 do
  local _, _, _, w = gang_rank(KEYS[2], m, r)
  if hybrid and w then
    local rest = string.match(redis.call('HGET', KEYS[1] .. ':ready', w) or '', '^%d+ (.*)$') or ''
    redis.call('HSET', KEYS[1] .. ':ready', w, int(now + HYBRID_REMARK_MS) .. ' ' .. rest)
  end
  if not hybrid then redis.call('RPUSH', KEYS[3], string.format('%s %d %d %d %s', m, epoch, r, version, w or '')) end
  if ARGV[5 + r] and ARGV[5 + r] ~= '' then
    redis.call('HSET', KEYS[8], string.format('%s.%d.train.%d', m, epoch, r), ARGV[5 + r])
  end
end
redis.call('RPUSH', KEYS[4], string.format('%s %d %d', m, epoch, version))
local state, next_epoch = epoch_end(es_params(KEYS[1]), m, epoch, nepochs)
local model_done, rung = 0, ''
if state == 'done' then
  model_done = 1
else
  if state == 'rung' then rung = int(epoch) end
  epoch = next_epoch
end
gang_clear(KEYS[2], m)
redis.call('HSET', KEYS[2], p .. 'state', state, p .. 'epoch', int(epoch), p .. 'visited', string.rep('0', nshards),
  p .. 'version', int(version), p .. 'ckpt', path, p .. 'token', '', p .. 'worker', '', p .. 'shard', '',
  p .. 'deadline', '', p .. 'attempts', '0', p .. 'not_before', '', p .. 'progress', '', p .. 'gang_done', G,
  p .. 'rung', rung,
  p .. 'commit', string.format('%s 1 %d %d %s', token, model_done, version, superseded))
redis.call('HSET', KEYS[1], 'updated', int(now))
if model_done == 1 then model_finished(KEYS[1], s[4], now) end
wake_mop(KEYS[6], W)
return {'committed', 1, model_done, int(version), superseded}
