-- Releases a SET NX PX mutex only if this owner still holds it.
-- KEYS: 1 lock.  ARGV: 1 owner.  Returns 1 released, 0 not held.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
