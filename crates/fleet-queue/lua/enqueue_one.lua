-- Appends one job that has an idempotency key or a delay (or both), all or nothing: the key's
-- check and claim and the append are one atomic step. (A batch goes through enqueue_batch.lua;
-- this script is its lean single-job form, for the send API's one-message requests.)
-- KEYS[1] = the stream, or the delayed set when ARGV[3] > 0,
-- KEYS[2] = the idempotency key (absent when the job has none)
-- ARGV[1] = the key's value: the job id, or the job id, a space and the request's fingerprint
-- (fleet-queue's queue.rs splits it), ARGV[2] = key TTL in ms, ARGV[3] = delay in ms (0: append to the stream now),
-- ARGV[4] = now in ms, or '' to use the Redis server's clock (the job is due at now + delay),
-- ARGV[5] = delayed-set member (when delayed), ARGV[6..] = stream entry fields (when not delayed)
-- Returns {1, ARGV[1]} when appended, {0, the key's value} when the key was already taken.
-- All or nothing: the claim (SET NX GET, Redis >= 7.0: it answers the first job id when the key
-- exists and sets it otherwise) is the only write before the append, and a failed append
-- releases it; a claim that fails writes nothing.
if KEYS[2] then
  local first = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
  if first then
    return {0, first}
  end
end
local delay = tonumber(ARGV[3])
local appended
if delay > 0 then
  local now = ARGV[4]
  if now == '' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  appended = redis.pcall('ZADD', KEYS[1], string.format('%.0f', tonumber(now) + delay), ARGV[5])
else
  appended = redis.pcall('XADD', KEYS[1], '*', unpack(ARGV, 6))
end
if type(appended) == 'table' and appended.err then
  if KEYS[2] then
    redis.call('DEL', KEYS[2])
  end
  return redis.error_reply(appended.err)
end
return {1, ARGV[1]}
