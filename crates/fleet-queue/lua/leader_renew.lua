-- Extends the scheduler's leadership lock, only if this replica still holds it (compare-and-set):
-- a replica whose lock expired and was taken by another must not extend the other's term.
-- KEYS[1] = the lock
-- ARGV[1] = this replica's token, ARGV[2] = TTL in ms
-- Returns 1 when extended, 0 when the lock is gone or held by another replica.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
