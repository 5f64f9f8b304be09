-- Acknowledges an entry and schedules its next attempt in the delayed set, atomically.
-- KEYS[1] = the stream the entry was read from, KEYS[2] = the delayed set
-- ARGV[1] = group, ARGV[2] = entry id, ARGV[3] = due time in ms, ARGV[4] = delayed-set member
-- Returns 1 when scheduled, 0 when the entry was no longer pending for this group (already
-- acknowledged, or reclaimed after a stall): then nothing is written, so a stale worker cannot
-- duplicate a job.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
