-- Moves due entries of the delayed set onto their priority streams, a bounded batch at a time.
-- KEYS[1..3] = the high, normal and low streams, KEYS[4] = the delayed set
-- ARGV[1] = now in ms, ARGV[2] = most entries to move
-- A member is "v1|<h|n|l>|<job id>|<attempts>|<max attempts>|<backoff>|<enqueued ms>|<payload>";
-- a member that does not parse is appended with only a `raw` field, so the consumer dead-letters
-- it as poison instead of it sitting in the set forever.
-- Returns the number of entries moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local stream_of = {h = 1, n = 2, l = 3}
for _, m in ipairs(due) do
  local parts = {}
  local pos = 1
  for _ = 1, 7 do
    local s = string.find(m, '|', pos, true)
    if not s then break end
    parts[#parts + 1] = string.sub(m, pos, s - 1)
    pos = s + 1
  end
  local idx = stream_of[parts[2] or '']
  if #parts == 7 and parts[1] == 'v1' and idx then
    redis.call('XADD', KEYS[idx], '*', 'v', '1', 'j', parts[3], 'a', parts[4], 'm', parts[5],
      'b', parts[6], 't', parts[7], 'p', string.sub(m, pos))
  else
    redis.call('XADD', KEYS[2], '*', 'raw', m)
  end
  redis.call('ZREM', KEYS[4], m)
end
return #due
