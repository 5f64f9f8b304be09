-- Acknowledges an entry and schedules its next attempt in the delayed set, atomically.
-- KEYS[1] = the stream the entry was read from, KEYS[2] = the delayed set
-- ARGV[1] = group, ARGV[2] = entry id, ARGV[3] = delay in ms, ARGV[4] = delayed-set member,
-- ARGV[5] = now in ms, or '' for the Redis server's clock
-- The due time is now + delay on Redis's clock, the clock promotion and the rate limiter use, so
-- a process whose clock is off by seconds still brings a deferred job back on its reserved slot.
-- Returns the due time (ms) when scheduled, 0 when the entry was no longer pending for this group
-- (already acknowledged, or reclaimed after a stall): then nothing is written, so a stale worker
-- cannot duplicate a job.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local now
if ARGV[5] == '' or ARGV[5] == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[5])
end
local due = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[4])
return due
