-- Appends a batch of jobs in one call, all or nothing: one command and one round trip for the
-- whole batch, which costs the client far less than one XADD per job. (A single job with an
-- idempotency key or a delay goes through enqueue_one.lua, the lean form of a batch of one.)
-- ARGV[1] = the priority levels' one-letter codes, highest first (`Priority::CODES`: 'hnl'), so
-- the levels are defined once, in fleet-core, and this script takes them from its caller
-- KEYS[1..L] = the L levels' streams in that order, KEYS[L + 1] = the delayed set,
-- KEYS[L + 2..] = the idempotency keys of the jobs that have one
-- ARGV[2] = number of jobs, ARGV[3] = now in ms, or '' to use the Redis server's clock (one clock
-- for every process: a delayed job is due at now + its delay, whoever enqueued it);
-- then 7 arguments per job: stream index (1..L), delay in ms (0: append now), idempotency key
-- index in KEYS (0: none), key TTL in ms, job id, header, payload
-- Returns a flat list {position, first job id, ...} of the jobs NOT appended because their
-- idempotency key was seen (earlier, or earlier in this batch); every other job was appended.
-- (Answering only the duplicates keeps the reply, and its cost, small.)
--
-- All or nothing: Redis does not undo a script's earlier writes when a later command fails, so
-- 1. before writing anything, the script checks the type of the streams and of the delayed set
--    (a key of another type is what makes XADD or ZADD fail), unless the batch holds one job;
-- 2. it claims the idempotency keys with SET NX GET (Redis >= 7.0: one command answers the first
--    job id when the key exists and sets it otherwise), before any append; a claim that fails (a
--    key of another type, a bad TTL) releases the keys claimed so far;
-- 3. it appends. Should a job fail here all the same (arguments that do not parse), what the
--    batch wrote is deleted before the error is returned: the entries appended (the newest of
--    their streams, since nothing runs between a script's commands), the delayed members added
--    and the keys claimed. (Redis refuses a script that is out of memory at its first write,
--    never later, so memory cannot fail a batch half way.)
-- The passes read ARGV in place and keep no per-job tables, and the error paths' helpers are
-- built only on an error: on a batch of 500 jobs, per-job tables cost Redis more time than the
-- appends, and on a single job every closure and table shows.

local codes = ARGV[1]
local levels = string.len(codes)
local delayed = levels + 1
local n = tonumber(ARGV[2])
if not n or n < 0 or #ARGV ~= 3 + n * 7 or levels < 1 or #KEYS < delayed then
  return redis.error_reply('ERR enqueue_batch: expected the level codes, their streams, the '
    .. 'delayed set, and 3 + 7 arguments per job')
end
local last = 3 + n * 7
local nkeys = #KEYS

-- 1. Key types. (A batch of one skips them: its append is its last write, and a failed append
-- is undone by releasing its claim alone; so a single idempotent enqueue stays as cheap as it
-- was.)
if n > 1 then
  for k = 1, delayed do
    local want = k == delayed and 'zset' or 'stream'
    local t = redis.call('TYPE', KEYS[k])['ok']
    if t ~= 'none' and t ~= want then
      return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. t .. ', not a ' .. want
        .. ': nothing of the batch was written')
    end
  end
end

-- 2. Idempotency claims (only a batch with a key has KEYS beyond the delayed set).
-- A job's arguments start at ARGV[b]; it is the ((b - 4) / 7 + 1)-th job, (b + 3) / 7.
local claimed, duplicate, out = nil, nil, {}
if nkeys > delayed then
  claimed, duplicate = {}, {}
  for b = 4, last, 7 do
    local key_at = tonumber(ARGV[b + 2])
    if key_at ~= 0 then
      local first
      if key_at and key_at > delayed and key_at <= nkeys then
        first = redis.pcall('SET', KEYS[key_at], ARGV[b + 4], 'NX', 'GET', 'PX', ARGV[b + 3])
      else
        first = {err = 'ERR enqueue_batch: bad idempotency key index'}
      end
      if type(first) == 'table' and first.err then
        for _, key in ipairs(claimed) do redis.call('DEL', key) end
        return redis.error_reply(first.err .. ' (job ' .. (b + 3) / 7
          .. '): nothing of the batch was written')
      end
      if first then
        duplicate[b] = true
        out[#out + 1] = (b + 3) / 7
        out[#out + 1] = first
      else
        claimed[#claimed + 1] = KEYS[key_at]
      end
    end
  end
end

-- 3. Appends.
local now = nil
local appended = {}
for b = 4, last, 7 do
  if not (duplicate and duplicate[b]) then
    local idx, delay = tonumber(ARGV[b]), tonumber(ARGV[b + 1])
    local r
    if not (idx and idx >= 1 and idx <= levels and delay and delay >= 0) then
      r = {err = 'ERR enqueue_batch: bad arguments'}
    elseif delay > 0 then
      if not now then
        if ARGV[3] == '' then
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        else
          now = tonumber(ARGV[3])
        end
      end
      if now then
        local header = ARGV[b + 5]
        r = redis.pcall('ZADD', KEYS[delayed], string.format('%.0f', now + delay),
          string.sub(codes, idx, idx) .. '|' .. string.len(header) .. '|' .. header .. ARGV[b + 6])
      else
        r = {err = 'ERR enqueue_batch: now must be a number or empty'}
      end
    else
      r = redis.pcall('XADD', KEYS[idx], '*', 'h', ARGV[b + 5], 'p', ARGV[b + 6])
      if type(r) ~= 'table' then
        appended[idx] = (appended[idx] or 0) + 1
      end
    end
    if type(r) == 'table' and r.err then
      -- Undo what the jobs before this one wrote: their entries are the newest of their streams
      -- (nothing runs between a script's commands), their delayed members are rebuilt from
      -- their arguments, and their keys are released.
      for k = 1, levels do
        if (appended[k] or 0) > 0 then
          for _, e in ipairs(redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', appended[k])) do
            redis.call('XDEL', KEYS[k], e[1])
          end
        end
      end
      for p = 4, b - 7, 7 do
        local pidx, pdelay = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
        if not (duplicate and duplicate[p]) and pdelay > 0 then
          local header = ARGV[p + 5]
          redis.call('ZREM', KEYS[delayed], string.sub(codes, pidx, pidx) .. '|' .. string.len(header)
            .. '|' .. header .. ARGV[p + 6])
        end
      end
      for _, key in ipairs(claimed or {}) do redis.call('DEL', key) end
      return redis.error_reply(r.err .. ' (job ' .. (b + 3) / 7 .. '): the batch was undone')
    end
  end
end
return out
