-- Puts a failed model back into its sweep (jobctl retry S/m): idle, with no
-- failed attempt or stall counted, at its last committed checkpoint, or at
-- an older checkpoint the caller found intact ('from': its path, the epoch
-- it ended and its version, which must not be above the committed one).
-- Resuming from an older checkpoint starts the epoch after it with no shard
-- visited; evaluations waiting for the later epochs, and their failures, are
-- dropped (those epochs are trained again); their results stay until the
-- new ones replace them; the visits after it stay in the schedule, so such
-- a model cannot be replayed (jobctl replay says so).  The model is live again: a done
-- sweep runs again (its test score, which may now change, is cleared) and
-- rejoins the active set that workers iterate.  A cancelled sweep stays
-- cancelled: nothing in it is retried.
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models, 4 evals,
--       6 wake, 9 active
-- ARGV: 1 model m, 2 the sweep id, 3 checkpoint path to resume from ('' for
--       the committed one), 4 the epoch that checkpoint ended (1-based),
--       5 its version
-- Returns {'retried', epoch to train} | {'no_model', M} | {'not_failed', state}
--       | {'cancelled'} | {'newer', committed version} | {'finished', E}
--       | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'state', 'models', 'shards', 'epochs', 'created')
if not s[1] then return {'missing'} end
if s[1] == 'cancelled' then return {'cancelled'} end
local m = tonumber(ARGV[1])
if not m or m < 0 or m >= tonumber(s[2]) then return {'no_model', s[2]} end
local p = int(m) .. '.'
local f = redis.call('HMGET', KEYS[2], p .. 'state', p .. 'version', p .. 'epoch')
if f[1] ~= 'failed' then return {'not_failed', f[1] or '?'} end
local epoch = tonumber(f[3])
if ARGV[3] ~= '' then
  local ended, version = tonumber(ARGV[4]), tonumber(ARGV[5])
  if version > tonumber(f[2]) then return {'newer', f[2]} end
  if ended >= tonumber(s[4]) then return {'finished', s[4]} end
  epoch = ended + 1
end
local now = int(now_ms())
redis.call('HSET', KEYS[2], p .. 'state', 'idle', p .. 'attempts', '0', p .. 'not_before', '',
  p .. 'stalls', '0', p .. 'reason', '', p .. 'error', '', p .. 'token', '', p .. 'shard', '',
  p .. 'deadline', '', p .. 'commit', '')
if ARGV[3] ~= '' then
  -- The version stays the committed one, so checkpoint file names keep
  -- rising; the path is the older file's own (retention deletes only
  -- v<N>- files, never a best-e or epoch file).
  redis.call('HSET', KEYS[2], p .. 'ckpt', ARGV[3], p .. 'epoch', int(epoch),
    p .. 'visited', string.rep('0', tonumber(s[3])))
  -- The epochs after it are trained again: what was waiting to evaluate
  -- them, and how their evaluations failed, belongs to the old run.
  for _, entry in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
    local em, ee = string.match(entry, '^(%d+) (%d+) ')
    if tonumber(em) == m and tonumber(ee) >= epoch then redis.call('LREM', KEYS[4], 0, entry) end
  end
  for e = epoch, tonumber(s[4]) do
    redis.call('HDEL', KEYS[2], p .. 'eval_error.' .. e, p .. 'eval_attempts.' .. e, p .. 'eval_stalls.' .. e,
      p .. 'eval_last_error.' .. e)
  end
end
redis.call('HINCRBY', KEYS[1], 'live', 1)
if s[1] == 'done' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'finished', '', 'test', '', 'test_by', '', 'test_token', '',
    'test_deadline', '', 'test_attempts', '0', 'test_not_before', '')
end
redis.call('HSET', KEYS[1], 'updated', now)
redis.call('ZADD', KEYS[9], tonumber(s[5]) or 0, ARGV[2])
wake_mop(KEYS[6], tonumber(s[3]) or 1)
return {'retried', int(epoch)}
