-- Adds trial t of a TPE search as model t (DESIGN.md §9, docs/search.md),
-- proposed by whichever worker saw the trial owed (worker_mop_search.c).
-- A TPE sweep starts with its `initial` random trials and owes one more
-- trial for each model that finishes, up to its budget:
--   owed = min(trials, initial + finished) - models, finished = models - live.
-- Trial t is added only while models == t and it is owed, in one call, so
-- two workers that propose it at once add it once (the other hears
-- 'taken'), and a proposal lost with its worker is owed still: the next
-- worker that looks makes it again.  The model starts as mop_create makes
-- one (prelude's new_model), idle, or failed with the reason when training
-- would refuse the proposal (it still spends the budget, so the sweep ends).
-- KEYS: the nine sweep keys (mop_create.lua); uses 1 sweep, 2 models, 6 wake
-- ARGV: 1 trial t, 2 its spec (JSON), 3 its point (JSON), 4 '' or why it failed
-- Returns {'added', t} | {'taken', models} | {'not_owed', models} | {'missing'}.
local s = redis.call('HMGET', KEYS[1], 'state', 'models', 'live', 'trials', 'initial', 'search', 'shards')
if not s[1] then return {'missing'} end
local M, live = tonumber(s[2]), tonumber(s[3])
if s[6] ~= 'tpe' or s[1] == 'cancelled' or s[1] == 'done' then return {'not_owed', M} end
local t = tonumber(ARGV[1])
if t ~= M then return {'taken', M} end
if M >= math.min(tonumber(s[4]), tonumber(s[5]) + M - live) then return {'not_owed', M} end
local now = now_ms()
local failed = ARGV[4] ~= ''
new_model(KEYS[2], t, tonumber(s[7]), ARGV[2], '', ARGV[3], failed and 'failed' or 'idle', ARGV[4])
redis.call('HSET', KEYS[1], 'models', int(M + 1), 'updated', int(now))
if failed then
  -- live does not change: counted as finished at once (the sweep may be done)
  redis.call('HINCRBY', KEYS[1], 'live', 1)
  model_finished(KEYS[1], s[1], now)
else
  redis.call('HINCRBY', KEYS[1], 'live', 1)
end
wake_mop(KEYS[6], tonumber(s[7]) or 1)
return {'added', int(t)}
