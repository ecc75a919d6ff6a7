-- Creates one job.
-- KEYS: 1 job, 2 wait, 3 delayed, 4 blocked, 5 dead, 6 queues, 7 wake, 8 stats,
--       9 unique key (the job key again when there is none),
--       then for each dependency: its job key, its dependents set.
-- ARGV: 1 id, 2 queue, 3 type, 4 payload, 5 priority, 6 delay_ms,
--       7 max_attempts, 8 max_stalls, 9 backoff_base_ms, 10 backoff_cap_ms,
--       11 unique ('' for none), 12 ndeps, 13.. dependency ids.
-- Returns {'created', state} | {'duplicate', live_id} | {'unknown_dep', id}.
local id = ARGV[1]
local unique = ARGV[11]
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('ERR job ' .. id .. ' already exists')
end
if unique ~= '' then
  local live = redis.call('GET', KEYS[9])
  if live then return {'duplicate', live} end
end

local now = now_ms()
local ndeps = tonumber(ARGV[12])
local pending = 0
local dead_reason = nil
for i = 1, ndeps do
  local did = ARGV[12 + i]
  local st = redis.call('HGET', KEYS[8 + 2 * i], 'state')
  if not st then return {'unknown_dep', did} end
  if st == 'dead' and not dead_reason then
    dead_reason = 'dependency ' .. did .. ' is dead: ' ..
      (redis.call('HGET', KEYS[8 + 2 * i], 'dead_reason') or '')
  elseif st == 'cancelled' and not dead_reason then
    dead_reason = 'dependency ' .. did .. ' was cancelled'
  elseif st ~= 'done' then
    pending = pending + 1
  end
end

local after = {}
for i = 1, ndeps do after[i] = ARGV[12 + i] end
local delay = tonumber(ARGV[6])
redis.call('HSET', KEYS[1],
  'id', id, 'queue', ARGV[2], 'type', ARGV[3], 'payload', ARGV[4],
  'priority', ARGV[5], 'attempts', '0', 'max_attempts', ARGV[7],
  'stalls', '0', 'max_stalls', ARGV[8],
  'backoff_base_ms', ARGV[9], 'backoff_cap_ms', ARGV[10],
  'unique', unique, 'after', table.concat(after, ' '),
  'created_ms', int(now), 'due_ms', int(now + delay))
redis.call('SADD', KEYS[6], ARGV[2])
redis.call('HINCRBY', KEYS[8], 'enqueued', 1)

if dead_reason then
  bury(KEYS[1], KEYS[5], KEYS[9], id, now, dead_reason)
  return {'created', 'dead'}
end
if unique ~= '' then redis.call('SET', KEYS[9], id) end

local state
if pending > 0 then
  for i = 1, ndeps do
    local dk = KEYS[8 + 2 * i]
    if redis.call('HGET', dk, 'state') ~= 'done' then
      redis.call('SADD', KEYS[9 + 2 * i], id)
      redis.call('HSET', dk, 'has_dependents', '1')
    end
  end
  state = 'blocked'
  redis.call('ZADD', KEYS[4], int(now), id)
elseif delay > 0 then
  state = 'delayed'
  redis.call('ZADD', KEYS[3], int(now + delay), id)
else
  state = 'waiting'
  redis.call('ZADD', KEYS[2], wait_score(ARGV[5], id), id)
  wake(KEYS[7])
end
redis.call('HSET', KEYS[1], 'state', state)
return {'created', state}
