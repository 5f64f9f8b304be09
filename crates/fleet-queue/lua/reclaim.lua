-- Recovers entries of one stream whose consumer held them longer than the lease (a crashed or
-- stuck worker): each is acknowledged for the old holder and appended again, with its attempt
-- counted, so any live consumer takes it; one whose attempts are exhausted goes to the
-- dead-letter stream with the reason "stalled".
-- KEYS[1] = the stream, KEYS[2] = the dead-letter stream
-- ARGV[1] = group, ARGV[2] = lease (min idle) in ms, ARGV[3] = most entries to handle,
-- ARGV[4] = now in ms (the time dead letters are stamped with), or '' to use the Redis server's
-- clock, ARGV[5] = dead-letter stream cap, ARGV[6] = priority name
-- (Idle times are measured by Redis whatever the clock: XPENDING's IDLE.)
-- Returns {requeued, dead_lettered, gone} (gone: pending ids whose entry was already trimmed).
local now = ARGV[4]
if now == '' then
  local t = redis.call('TIME')
  now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[2], '-', '+', ARGV[3])
local requeued, dead, gone = 0, 0, 0
for _, p in ipairs(pending) do
  local id = p[1]
  local found = redis.call('XRANGE', KEYS[1], id, id)
  redis.call('XACK', KEYS[1], ARGV[1], id)
  if #found == 0 then
    gone = gone + 1
  else
    local f = found[1][2]
    local header_at = nil
    for i = 1, #f, 2 do
      if f[i] == 'h' then header_at = i + 1 end
    end
    -- Header: 1|<job id>|<attempts>|<max attempts>|<backoff>|<enqueued ms>
    local pre, a, max, post = nil, nil, nil, nil
    if header_at then
      pre, a, max, post = string.match(f[header_at], '^(1|[^|]*|)(%d+)|(%d+)(|.*)$')
    end
    if pre == nil then
      -- Not a valid job: straight to the dead-letter stream, the consumer would do the same.
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'reason', 'poison',
        'error', 'stalled entry without a valid header', 'orig', id, 'prio', ARGV[6],
        'died', now, unpack(f))
      dead = dead + 1
    else
      a = tonumber(a) + 1
      f[header_at] = pre .. a .. '|' .. max .. post
      if a >= tonumber(max) then
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'reason', 'stalled',
          'error', 'lease expired ' .. p[4] .. ' time(s) without acknowledgement',
          'orig', id, 'prio', ARGV[6], 'died', now, unpack(f))
        dead = dead + 1
      else
        redis.call('XADD', KEYS[1], '*', unpack(f))
        requeued = requeued + 1
      end
    end
  end
end
return {requeued, dead, gone}
