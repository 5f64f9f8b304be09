-- Moves dead-letter entries back onto their queue's streams with attempts reset.
-- ARGV[1] = the priority levels' names, highest first, space-separated ('high normal low': the
-- `prio` field of a dead letter names its level), ARGV[2] = the position of the default level
-- KEYS[1..L] = the L levels' streams in that order, KEYS[L + 1] = the dead-letter stream
-- ARGV[3..] = the dead entry ids to replay, each a full stream id `<ms>-<seq>`
-- Returns the number of entries replayed. An id that names no entry is skipped, and so is an
-- incomplete id (`<ms>` alone): XRANGE reads it as the whole millisecond, which may hold several
-- entries, while XDEL reads it as `<ms>-0`, so replaying by it could append an entry and leave it
-- dead, to be replayed again. Only an entry whose id is exactly the one given is replayed, and
-- it is deleted by that id. (The library refuses incomplete ids before calling this.)
local stream_of, levels = {}, 0
for name in string.gmatch(ARGV[1], '%S+') do
  levels = levels + 1
  stream_of[name] = levels
end
local default = tonumber(ARGV[2])
local dead = levels + 1
local n = 0
for a = 3, #ARGV do
  local id = ARGV[a]
  local found = redis.call('XRANGE', KEYS[dead], id, id, 'COUNT', 1)
  if #found == 1 and found[1][1] == id then
    local f = found[1][2]
    local out = {}
    local idx = default
    for i = 1, #f, 2 do
      local k, v = f[i], f[i + 1]
      if k == 'prio' then
        idx = stream_of[v] or default
      elseif k == 'h' then
        -- Reset the attempts (third part of the header).
        out[#out + 1] = 'h'
        out[#out + 1] = string.gsub(v, '^(1|[^|]*|)%d+', function(pre) return pre .. '0' end, 1)
      elseif k ~= 'reason' and k ~= 'error' and k ~= 'orig' and k ~= 'died' then
        out[#out + 1] = k
        out[#out + 1] = v
      end
    end
    redis.call('XADD', KEYS[idx], '*', unpack(out))
    redis.call('XDEL', KEYS[dead], found[1][1])
    n = n + 1
  end
end
return n
