-- Phase 2 of a claim: for each leased job whose token still holds, marks the
-- job active on this worker and returns what the worker needs to run it.
-- KEYS: 1 lease, 2.. job keys
-- ARGV: 1 worker id, then id, token pairs
-- Returns, per job, {type, payload, attempts, max_attempts, unique} or 0.
local now = int(now_ms())
local out = {}
for i = 2, #KEYS do
  local id = ARGV[2 * i - 2]
  local token = ARGV[2 * i - 1]
  if redis.call('HGET', KEYS[1], id) == token and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], 'state', 'active', 'worker', ARGV[1], 'started_ms', now)
    out[#out + 1] = redis.call('HMGET', KEYS[i], 'type', 'payload', 'attempts', 'max_attempts', 'unique')
  else
    out[#out + 1] = 0
  end
end
return out
