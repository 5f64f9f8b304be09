-- Gives up the scheduler's leadership lock, only if this replica holds it, so a graceful stop
-- lets another replica take over at its next campaign instead of after the TTL.
-- KEYS[1] = the lock
-- ARGV[1] = this replica's token
-- Returns 1 when released, 0 when the lock was not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
