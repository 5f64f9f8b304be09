-- Moves dead-letter entries back onto their queue's streams with attempts reset.
-- KEYS[1..3] = the high, normal and low streams, KEYS[4] = the dead-letter stream
-- ARGV = the dead entry ids to replay, each a full stream id `<ms>-<seq>`
-- Returns the number of entries replayed. An id that names no entry is skipped, and so is an
-- incomplete id (`<ms>` alone): XRANGE reads it as the whole millisecond, which may hold several
-- entries, while XDEL reads it as `<ms>-0`, so replaying by it could append an entry and leave it
-- dead, to be replayed again. Only an entry whose id is exactly the one given is replayed, and
-- it is deleted by that id. (The library refuses incomplete ids before calling this.)
local stream_of = {high = 1, normal = 2, low = 3}
local n = 0
for _, id in ipairs(ARGV) do
  local found = redis.call('XRANGE', KEYS[4], id, id, 'COUNT', 1)
  if #found == 1 and found[1][1] == id then
    local f = found[1][2]
    local out = {}
    local idx = 2
    for i = 1, #f, 2 do
      local k, v = f[i], f[i + 1]
      if k == 'prio' then
        idx = stream_of[v] or 2
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
    redis.call('XDEL', KEYS[4], found[1][1])
    n = n + 1
  end
end
return n
