-- A MOP worker says it serves shard k: the shard's last beat is now (server
-- time).  Idle workers read these beats (mop_orphans.lua) to find shards
-- whose worker is gone and serve them too, so a lost node does not hang a
-- sweep (DATA_ROOT is shared).
-- KEYS: 1 the shard beats hash (mop:shards)
-- ARGV: 1 shard k
redis.call('HSET', KEYS[1], ARGV[1], int(now_ms()))
return {'ok'}
