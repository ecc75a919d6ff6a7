-- The cds_results outbox of one database (queue_outbox.c; keys in
-- docs/redis-keys.md).  mop_result appends each evaluated epoch's row to the
-- list of its database (DSN), oldest first; workers write the rows to the
-- database in that order and remove each only once the database took it.
--
-- One worker at a time holds the list's claim (token, worker, deadline in
-- the state hash), so rows go in the order they were recorded; a claim whose
-- deadline passed may be taken by another worker, and a worker may take its
-- own claim again (a pass cut short by a lost Redis connection).  The index
-- scores each list by the time it may next be tried: failed tries move it by
-- the backoff, shared by every worker, so N workers do not hammer a dead
-- database N times.  A row the database refuses for a reason of its own (bad
-- data, not a database that is away) is set aside, with the reason, after
-- max_refusals tries, or at once when it is not even JSON, so it cannot
-- block the rows behind it; set-aside rows are kept in results:aside.
-- Invariants: a DSN id is in the index iff its list has rows; the state hash
-- is deleted with the last row; a row leaves the list only by done (written)
-- or by being set aside, and only while it is the head and the claim holds.
--
-- KEYS: 1 results:outbox (index: DSN id -> next try, ms), 2 results:outbox:{<id>}
--       (rows), 3 results:outbox:{<id>}:state, 4 results:aside
-- ARGV: 1 op: take | done | fail | release, 2 DSN id, 3 worker, 4 claim token,
--       5 claim ms; done and fail: 6 the row written or refused (the head,
--       as the last answer gave it); fail: 7 the error, 8 retry | refused |
--       malformed, 9 backoff base ms, 10 cap ms, 11 factor in [0.5, 1] (the
--       client draws it: scripts are deterministic), 12 max refusals
-- Returns {state, row, waiting, failures, now_ms, failing_since_ms,
--          last_error, dsn}, dsn being the state's (nil when it has none:
--          rows do not repeat it), state being
--   row       the claim is this worker's; row is the head, to write next
--   empty     nothing waits (failing_since_ms: since when the database had
--             failed before the rows kept meanwhile were written, '' if it
--             had not)
--   later     the database is being retried with backoff (the index score
--             says until when)
--   busy      another worker's claim holds
--   lost      this worker's claim was taken over: stop, write nothing more
--   released  the claim is given back (release)
--   aside     fail set the row aside; row is the next head ('' if none) and
--             the claim still holds
-- failing_since_ms is the start of the current outage: set by the first
-- failure, cleared by the next row written; backlog_since_ms keeps it from
-- then until the last row kept meanwhile is written, for the "backlog
-- written" line, so a later outage starts its own time.
local op, id, worker, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local claim_ms = tonumber(ARGV[5])
local now = now_ms()

local function answer(state, row, since)
  local s = redis.call('HMGET', KEYS[3], 'failures', 'failing_since_ms', 'last_error', 'dsn')
  return {state, row or '', redis.call('LLEN', KEYS[2]), s[1] or '0', int(now), since or s[2] or '', s[3] or '',
    s[4]}
end

-- Nothing left: the index entry and the state go; says since when the
-- database had been failing, for the worker's "backlog written" line.
local function emptied(state)
  local s = redis.call('HMGET', KEYS[3], 'backlog_since_ms', 'failing_since_ms')
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', KEYS[3])
  return answer(state, '', s[1] or s[2] or '')
end

local function hold_claim()
  redis.call('HSET', KEYS[3], 'claim_token', token, 'claim_by', worker, 'claim_deadline', int(now + claim_ms))
end

if op == 'take' then
  if redis.call('LLEN', KEYS[2]) == 0 then return emptied('empty') end
  local c = redis.call('HMGET', KEYS[3], 'claim_token', 'claim_by', 'claim_deadline')
  if c[1] and c[1] ~= '' and c[2] ~= worker and tonumber(c[3] or '0') >= now then
    return answer('busy')
  end
  local score = tonumber(redis.call('ZSCORE', KEYS[1], id) or '')
  if not score then
    redis.call('ZADD', KEYS[1], int(now), id) -- rows without an index entry: mend it
  elseif score > now then
    return answer('later')
  end
  hold_claim()
  return answer('row', redis.call('LINDEX', KEYS[2], 0))
end

if redis.call('HGET', KEYS[3], 'claim_token') ~= token then return answer('lost') end

if op == 'release' then
  redis.call('HDEL', KEYS[3], 'claim_token', 'claim_by', 'claim_deadline')
  return answer('released')
end

local row = ARGV[6]
local is_head = redis.call('LINDEX', KEYS[2], 0) == row

if op == 'done' then
  if is_head then redis.call('LPOP', KEYS[2]) end
  -- The database takes rows again: the outage is over.
  local since = redis.call('HGET', KEYS[3], 'failing_since_ms')
  if since then
    redis.call('HSET', KEYS[3], 'backlog_since_ms', since)
    redis.call('HDEL', KEYS[3], 'failing_since_ms')
  end
  if redis.call('LLEN', KEYS[2]) == 0 then return emptied('empty') end
  redis.call('HSET', KEYS[3], 'failures', '0', 'head_refusals', '0')
  redis.call('ZADD', KEYS[1], int(now), id)
  hold_claim()
  return answer('row', redis.call('LINDEX', KEYS[2], 0))
end

if op ~= 'fail' then return redis.error_reply('outbox.lua: unknown op ' .. tostring(op)) end

local why, kind = ARGV[7], ARGV[8]
if is_head and (kind == 'refused' or kind == 'malformed') then
  local refusals = redis.call('HINCRBY', KEYS[3], 'head_refusals', 1)
  if kind == 'malformed' or refusals >= tonumber(ARGV[12]) then
    redis.call('LPOP', KEYS[2])
    redis.call('RPUSH', KEYS[4], cjson.encode({dsn_id = id, dsn = redis.call('HGET', KEYS[3], 'dsn') or '',
      error = why, attempts = refusals, aside_ms = now, row = row}))
    if redis.call('LLEN', KEYS[2]) == 0 then return emptied('aside') end
    redis.call('HSET', KEYS[3], 'head_refusals', '0')
    hold_claim()
    return answer('aside', redis.call('LINDEX', KEYS[2], 0))
  end
end
local failures = redis.call('HINCRBY', KEYS[3], 'failures', 1)
local next_try = now + backoff_ms(failures, tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]))
redis.call('HSET', KEYS[3], 'last_error', why, 'last_error_ms', int(now))
redis.call('HSETNX', KEYS[3], 'failing_since_ms', int(now))
redis.call('HDEL', KEYS[3], 'claim_token', 'claim_by', 'claim_deadline')
redis.call('ZADD', KEYS[1], int(next_try), id)
return answer('later')
