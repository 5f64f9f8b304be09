-- Appends a batch of jobs in one call: one command and one round trip for the whole batch,
-- which costs the client far less than one XADD per job, and makes the batch atomic.
-- KEYS[1..3] = the high, normal and low streams, KEYS[4] = the delayed set,
-- KEYS[5..] = the idempotency keys of the jobs that have one
-- ARGV[1] = number of jobs; then 7 arguments per job: stream index (1..3), due time in ms
-- (0: append now), idempotency key index in KEYS (0: none), key TTL in ms, job id, header, payload
-- Returns a flat list {position, first job id, ...} of the jobs NOT appended because their
-- idempotency key was seen (earlier, or earlier in this batch); every other job was appended.
-- (Answering only the duplicates keeps the reply, and its cost, small.)
--
-- The idempotency check and the claim are one command, SET NX GET (Redis >= 7.0): it answers
-- the first job id when the key exists and sets it otherwise. One call instead of GET then SET
-- is a third of the script's per-job cost. Should the append then fail, the claim is undone, so
-- a retry of the same job is not mistaken for a duplicate.
local n = tonumber(ARGV[1])
local out = {}
local names = {'h', 'n', 'l'}
for i = 0, n - 1 do
  local b = 2 + i * 7
  local idx, due, key_at = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local first = false
  if key_at > 0 then
    first = redis.call('SET', KEYS[key_at], ARGV[b + 4], 'NX', 'GET', 'PX', ARGV[b + 3])
  end
  if first then
    out[#out + 1] = i + 1
    out[#out + 1] = first
  else
    local appended
    if due > 0 then
      local header = ARGV[b + 5]
      appended = redis.pcall('ZADD', KEYS[4], due,
        names[idx] .. '|' .. string.len(header) .. '|' .. header .. ARGV[b + 6])
    else
      appended = redis.pcall('XADD', KEYS[idx], '*', 'h', ARGV[b + 5], 'p', ARGV[b + 6])
    end
    if type(appended) == 'table' and appended.err then
      if key_at > 0 then
        redis.call('DEL', KEYS[key_at])
      end
      return redis.error_reply(appended.err)
    end
  end
end
return out
