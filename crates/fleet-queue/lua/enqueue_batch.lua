-- Appends a batch of jobs in one call, all or nothing: one command and one round trip for the
-- whole batch, which costs the client far less than one XADD per job. Every scripted enqueue goes
-- through here (a single job with an idempotency key or a delay is a batch of one).
-- KEYS[1..3] = the high, normal and low streams, KEYS[4] = the delayed set,
-- KEYS[5..] = the idempotency keys of the jobs that have one
-- ARGV[1] = number of jobs, ARGV[2] = now in ms, or '' to use the Redis server's clock (one clock
-- for every process: a delayed job is due at now + its delay, whoever enqueued it);
-- then 7 arguments per job: stream index (1..3), delay in ms (0: append now), idempotency key
-- index in KEYS (0: none), key TTL in ms, job id, header, payload
-- Returns a flat list {position, first job id, ...} of the jobs NOT appended because their
-- idempotency key was seen (earlier, or earlier in this batch); every other job was appended.
-- (Answering only the duplicates keeps the reply, and its cost, small.)
--
-- All or nothing: Redis does not undo a script's earlier writes when a later command fails, so
-- the script orders its work so that nothing can fail after the first write that is not undone:
-- 1. It checks every argument, and the type of every stream and of the delayed set it will
--    write (a key of another type is what makes XADD or ZADD fail), before writing anything.
-- 2. It claims the idempotency keys with SET NX GET (Redis >= 7.0: one command answers the first
--    job id when the key exists and sets it otherwise). A claim that fails (a key of another
--    type) releases the keys claimed so far, and the batch fails having written nothing.
-- 3. It appends. Should an append fail all the same, what the batch wrote is deleted (XDEL of the
--    entries appended, ZREM of the delayed members added, DEL of the keys claimed) before the
--    error is returned. (Redis refuses a script that is out of memory at its first write, never
--    later, so memory cannot fail a batch half way.)

local n = tonumber(ARGV[1])
if not n or n < 0 or #ARGV ~= 2 + n * 7 then
  return redis.error_reply('ERR enqueue_batch: expected 2 + 7 arguments per job')
end
local now = 0
local names = {'h', 'n', 'l'}

-- 1. Arguments and key types.
local jobs = {}
local delayed_any = false
local stream_used = {}
for i = 1, n do
  local b = 3 + (i - 1) * 7
  local job = {
    idx = tonumber(ARGV[b]), delay = tonumber(ARGV[b + 1]), key_at = tonumber(ARGV[b + 2]),
    ttl = ARGV[b + 3], id = ARGV[b + 4], header = ARGV[b + 5], payload = ARGV[b + 6],
  }
  if not (job.idx and names[job.idx] and job.delay and job.delay >= 0 and job.key_at
      and (job.key_at == 0 or (job.key_at >= 5 and job.key_at <= #KEYS))) then
    return redis.error_reply('ERR enqueue_batch: bad arguments for job ' .. i)
  end
  if job.key_at > 0 and not (tonumber(job.ttl) and tonumber(job.ttl) > 0) then
    return redis.error_reply('ERR enqueue_batch: bad idempotency TTL for job ' .. i)
  end
  if job.delay > 0 then delayed_any = true else stream_used[job.idx] = true end
  jobs[i] = job
end
local function wrong_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want
      .. ': nothing of the batch was written')
  end
end
for idx = 1, 3 do
  if stream_used[idx] then
    local e = wrong_type(KEYS[idx], 'stream')
    if e then return e end
  end
end
if delayed_any then
  local e = wrong_type(KEYS[4], 'zset')
  if e then return e end
  if ARGV[2] == '' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  else
    now = tonumber(ARGV[2])
    if not now then
      return redis.error_reply('ERR enqueue_batch: now must be a number or empty')
    end
  end
end

-- 2. Idempotency claims.
local claimed = {}
local out = {}
for i, job in ipairs(jobs) do
  if job.key_at > 0 then
    local first = redis.pcall('SET', KEYS[job.key_at], job.id, 'NX', 'GET', 'PX', job.ttl)
    if type(first) == 'table' and first.err then
      for _, key in ipairs(claimed) do redis.call('DEL', key) end
      return redis.error_reply(first.err .. ' (idempotency key of job ' .. i
        .. '): nothing of the batch was written')
    end
    if first then
      job.duplicate = true
      out[#out + 1] = i
      out[#out + 1] = first
    else
      claimed[#claimed + 1] = KEYS[job.key_at]
    end
  end
end

-- 3. Appends.
local appended, added = {}, {}
for _, job in ipairs(jobs) do
  if not job.duplicate then
    local r
    if job.delay > 0 then
      local member = names[job.idx] .. '|' .. string.len(job.header) .. '|' .. job.header .. job.payload
      r = redis.pcall('ZADD', KEYS[4], string.format('%.0f', now + job.delay), member)
      if r == 1 then added[#added + 1] = member end
    else
      r = redis.pcall('XADD', KEYS[job.idx], '*', 'h', job.header, 'p', job.payload)
      if type(r) == 'string' then appended[#appended + 1] = {KEYS[job.idx], r} end
    end
    if type(r) == 'table' and r.err then
      for _, a in ipairs(appended) do redis.call('XDEL', a[1], a[2]) end
      if #added > 0 then redis.call('ZREM', KEYS[4], unpack(added)) end
      for _, key in ipairs(claimed) do redis.call('DEL', key) end
      return redis.error_reply(r.err .. ': the batch was undone')
    end
  end
end
return out
