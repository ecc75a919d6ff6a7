-- Publishes the checkpoint of a visit if its lease still holds (model leased
-- with this token, for this shard, deadline not passed); otherwise changes
-- nothing and the worker discards its file.
-- On success: shard k is marked visited, the version goes up by one and the
-- path becomes the model's checkpoint, the visit is appended to the schedule,
-- and the model is idle again; if that was the epoch's last shard, the epoch
-- goes to the evaluation list, the next epoch starts with no shard visited,
-- and after the last epoch the model is done (and the sweep, when it was the
-- last live model).  With early stopping (prelude's epoch_end) the last
-- epoch may come sooner, and an epoch that is a rung leaves the model in
-- state 'rung' (<m>.rung = that epoch), leased by no one until the rung's
-- evaluation is recorded and the rule applied (mop_result.lua).  Epochs count from 1; a done model stays at its last.  A receipt (token and outcome) is kept so that a commit
-- resent after a lost reply hears the same answer rather than "lost", which
-- would make its worker delete the checkpoint now in use.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models,
--       3 schedule, 4 evals, 6 wake, 8 results
-- ARGV: 1 model m, 2 token, 3 shard k, 4 checkpoint path, 5 the visit's
--       metrics (JSON, stored as results "<m>.<epoch>.train.<k>" before the
--       epoch is queued for evaluation, so an evaluation sees all of them;
--       '' for none)
-- Returns {'committed', epoch_done, model_done, version, superseded}
--       | {'lost'} | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'shards', 'epochs', 'live', 'state')
if not s[1] then return {'missing'} end
local nshards, nepochs = tonumber(s[1]), tonumber(s[2])
local m, token, k, path = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local p = m .. '.'
local f = redis.call('HMGET', KEYS[2], p .. 'state', p .. 'token', p .. 'shard', p .. 'deadline',
  p .. 'epoch', p .. 'visited', p .. 'version', p .. 'ckpt', p .. 'worker', p .. 'commit')
local rt, red, rmd, rver, rsup = string.match(f[10] or '', '^(%x+) (%d) (%d) (%d+) (.*)$')
if rt == token then return {'committed', tonumber(red), tonumber(rmd), rver, rsup} end
local now = now_ms()
if f[1] ~= 'leased' or f[2] ~= token or tonumber(f[3]) ~= k or now > tonumber(f[4]) then
  return {'lost'}
end

local epoch = tonumber(f[5])
local visited = string.sub(f[6], 1, k) .. '1' .. string.sub(f[6], k + 2)
local version = tonumber(f[7]) + 1
local superseded = f[8]
redis.call('RPUSH', KEYS[3], string.format('%s %d %d %d %s', m, epoch, k, version, f[9]))
if ARGV[5] and ARGV[5] ~= '' then
  redis.call('HSET', KEYS[8], string.format('%s.%d.train.%d', m, epoch, k), ARGV[5])
end
local epoch_done, model_done, state, rung = 0, 0, 'idle', ''
local _, visits = string.gsub(visited, '1', '')
if visits == nshards then
  epoch_done = 1
  redis.call('RPUSH', KEYS[4], string.format('%s %d %d', m, epoch, version))
  local next_epoch
  state, next_epoch = epoch_end(es_params(KEYS[1]), m, epoch, nepochs)
  if state == 'done' then
    -- A done model keeps its last epoch (1-based, so it reads "epoch E").
    model_done = 1
  else
    if state == 'rung' then rung = int(epoch) end
    epoch = next_epoch
    visited = string.rep('0', nshards)
  end
end
-- A commit ends the run of failed attempts: the next visit starts afresh.
redis.call('HSET', KEYS[2], p .. 'state', state, p .. 'epoch', int(epoch), p .. 'visited', visited,
  p .. 'version', int(version), p .. 'ckpt', path, p .. 'token', '', p .. 'shard', '',
  p .. 'deadline', '', p .. 'attempts', '0', p .. 'not_before', '', p .. 'progress', '', p .. 'rung', rung,
  p .. 'commit', string.format('%s %d %d %d %s', token, epoch_done, model_done, version, superseded))
redis.call('HSET', KEYS[1], 'updated', int(now))
if model_done == 1 then model_finished(KEYS[1], s[4], now) end
wake_mop(KEYS[6], 1)
return {'committed', epoch_done, model_done, int(version), superseded}
