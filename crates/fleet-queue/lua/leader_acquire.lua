-- Campaigns for the scheduler's leadership lock: takes it when free, with a TTL, and hands out a
-- fencing token (a counter incremented on every acquisition, so terms are strictly ordered).
-- KEYS[1] = the lock, KEYS[2] = the fencing counter (never expires)
-- ARGV[1] = this replica's token, ARGV[2] = TTL in ms
-- Returns the fencing token of the term (>= 1) when this replica holds the lock after the call
-- (newly acquired, or already its own and now extended), or 0 when another replica holds it.
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  -- Already ours (a renewal whose reply was lost): extend it; the counter still names our term,
  -- since only an acquisition increments it and nobody else acquired while we held the lock.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
