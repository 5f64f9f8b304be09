-- Moves due entries of the delayed set onto their priority streams, a bounded batch at a time.
-- ARGV[1] = the priority levels' one-letter codes, highest first (`Priority::CODES`: 'hnl'),
-- ARGV[2] = the position of the default level in them (where an unparseable member goes)
-- KEYS[1..L] = the L levels' streams in that order, KEYS[L + 1] = the delayed set
-- ARGV[3] = now in ms, or '' to use the Redis server's clock (one clock for every process, the
-- one delayed enqueues use), ARGV[4] = most entries to move
-- A member is "<level code>|<header length>|<header><payload>" (see src/entry.rs); a member that
-- does not parse is appended to the default level with only a `raw` field, so the consumer
-- dead-letters it as poison instead of it sitting in the set forever.
-- Returns the number of entries moved.
local codes = ARGV[1]
local delayed = string.len(codes) + 1
local stream_of = {}
for i = 1, string.len(codes) do stream_of[string.sub(codes, i, i)] = i end
local now = ARGV[3]
if now == '' then
  local t = redis.call('TIME')
  now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
local due = redis.call('ZRANGEBYSCORE', KEYS[delayed], '-inf', now, 'LIMIT', 0, ARGV[4])
for _, m in ipairs(due) do
  local p, len, start = string.match(m, '^(%a)|(%d+)|()')
  local idx = p and stream_of[p]
  if idx then
    len = tonumber(len)
    redis.call('XADD', KEYS[idx], '*', 'h', string.sub(m, start, start + len - 1),
      'p', string.sub(m, start + len))
  else
    redis.call('XADD', KEYS[tonumber(ARGV[2])], '*', 'raw', m)
  end
  redis.call('ZREM', KEYS[delayed], m)
end
return #due
