-- Moves due entries of the delayed set onto their priority streams, a bounded batch at a time.
-- KEYS[1..3] = the high, normal and low streams, KEYS[4] = the delayed set
-- ARGV[1] = now in ms, or '' to use the Redis server's clock (one clock for every process, the
-- one delayed enqueues use), ARGV[2] = most entries to move
-- A member is "<h|n|l>|<header length>|<header><payload>" (see src/entry.rs); a member that does
-- not parse is appended with only a `raw` field, so the consumer dead-letters it as poison
-- instead of it sitting in the set forever.
-- Returns the number of entries moved.
local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local due = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, ARGV[2])
local stream_of = {h = 1, n = 2, l = 3}
for _, m in ipairs(due) do
  local p, len, start = string.match(m, '^(%a)|(%d+)|()')
  local idx = p and stream_of[p]
  if idx then
    len = tonumber(len)
    redis.call('XADD', KEYS[idx], '*', 'h', string.sub(m, start, start + len - 1),
      'p', string.sub(m, start + len))
  else
    redis.call('XADD', KEYS[2], '*', 'raw', m)
  end
  redis.call('ZREM', KEYS[4], m)
end
return #due
