-- The DSN outboxes of cds_results rows that may be tried now (their next
-- try, by the server's clock, has come), oldest due first (outbox.lua).
-- KEYS: 1 results:outbox
-- ARGV: 1 how many at most
-- Returns the DSN ids.
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now_ms()), 'LIMIT', 0, tonumber(ARGV[1]))
