-- Creates a batch of jobs of one queue (one call, so a producer of many small
-- jobs pays the script overhead once per batch, not once per job).
-- KEYS: 1 wait, 2 delayed, 3 blocked, 4 dead, 5 queues, 6 wake, 7 stats,
--       then for each job: its job key, its unique key (the job key again when
--       it has none), and for each of its dependencies the dependency's job
--       key and dependents set.
-- ARGV: 1 queue, 2 number of jobs, then for each job: id, type, payload,
--       priority, delay_ms, max_attempts, max_stalls, backoff_base_ms,
--       backoff_cap_ms, unique ('' for none), ndeps, dependency ids...
-- Returns one reply per job: {'created', state} | {'duplicate', live_id} |
-- {'unknown_dep', id} | {'exists'}.
local queue = ARGV[1]
local now = now_ms()
local k, a = 8, 3
local out = {}
local woke = false
local created = 0

local function enqueue_one()
  local jkey, ukey = KEYS[k], KEYS[k + 1]
  local id, jtype, payload, priority, delay = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4])
  local unique, ndeps = ARGV[a + 9], tonumber(ARGV[a + 10])
  local dkeys, dsets, dids = {}, {}, {}
  for i = 1, ndeps do
    dkeys[i] = KEYS[k + 2 * i]
    dsets[i] = KEYS[k + 2 * i + 1]
    dids[i] = ARGV[a + 10 + i]
  end
  local fields = {ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]}
  k = k + 2 + 2 * ndeps
  a = a + 11 + ndeps

  if redis.call('EXISTS', jkey) == 1 then return {'exists'} end
  if unique ~= '' then
    local live = redis.call('GET', ukey)
    if live then return {'duplicate', live} end
  end
  local pending, dead_reason = 0, nil
  for i = 1, ndeps do
    local st = redis.call('HGET', dkeys[i], 'state')
    if not st then return {'unknown_dep', dids[i]} end
    if st == 'dead' and not dead_reason then
      dead_reason = 'dependency ' .. dids[i] .. ' is dead: ' ..
        (redis.call('HGET', dkeys[i], 'dead_reason') or '')
    elseif st == 'cancelled' and not dead_reason then
      dead_reason = 'dependency ' .. dids[i] .. ' was cancelled'
    elseif st ~= 'done' then
      pending = pending + 1
    end
  end

  local state
  if dead_reason then state = 'dead'
  elseif pending > 0 then state = 'blocked'
  elseif delay > 0 then state = 'delayed'
  else state = 'waiting' end
  redis.call('HSET', jkey,
    'id', id, 'queue', queue, 'type', jtype, 'payload', payload, 'state', state,
    'priority', priority, 'attempts', '0', 'max_attempts', fields[1],
    'stalls', '0', 'max_stalls', fields[2],
    'backoff_base_ms', fields[3], 'backoff_cap_ms', fields[4],
    'unique', unique, 'after', table.concat(dids, ' '),
    'created_ms', int(now), 'due_ms', int(now + delay))
  created = created + 1

  if dead_reason then
    redis.call('HINCRBY', KEYS[7], 'dead', 1)
    bury(jkey, KEYS[4], ukey, id, now, dead_reason)
    return {'created', 'dead'}
  end
  if unique ~= '' then redis.call('SET', ukey, id) end
  if state == 'blocked' then
    for i = 1, ndeps do
      if redis.call('HGET', dkeys[i], 'state') ~= 'done' then
        redis.call('SADD', dsets[i], id)
        redis.call('HSET', dkeys[i], 'has_dependents', '1')
      end
    end
    redis.call('ZADD', KEYS[3], int(now), id)
  elseif state == 'delayed' then
    redis.call('ZADD', KEYS[2], int(now + delay), id)
  else
    redis.call('ZADD', KEYS[1], wait_score(priority, id), id)
    woke = true
  end
  return {'created', state}
end

for j = 1, tonumber(ARGV[2]) do out[j] = enqueue_one() end
if created > 0 then
  redis.call('SADD', KEYS[5], queue)
  redis.call('HINCRBY', KEYS[7], 'enqueued', created)
end
if woke then wake(KEYS[6]) end
return out
