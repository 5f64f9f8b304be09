-- Appends a job unless its idempotency key was seen; the check and the append are one atomic step.
-- KEYS[1] = the idempotency key, KEYS[2] = the stream (or the delayed set when ARGV[3] > 0)
-- ARGV[1] = job id, ARGV[2] = key TTL in ms, ARGV[3] = due time in ms (0: append to the stream now)
-- ARGV[4] = delayed-set member (when delayed), ARGV[5..] = stream entry fields (when not delayed)
-- Returns {1, job id} when appended, {0, first job id} when the key was already taken.
-- SET NX GET (Redis >= 7.0) checks and claims the key in one command; a failed append undoes the
-- claim (see enqueue_batch.lua).
local first = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
if first then
  return {0, first}
end
local appended
if tonumber(ARGV[3]) > 0 then
  appended = redis.pcall('ZADD', KEYS[2], ARGV[3], ARGV[4])
else
  appended = redis.pcall('XADD', KEYS[2], '*', unpack(ARGV, 5))
end
if type(appended) == 'table' and appended.err then
  redis.call('DEL', KEYS[1])
  return redis.error_reply(appended.err)
end
return {1, ARGV[1]}
