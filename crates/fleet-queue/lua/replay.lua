-- Moves dead-letter entries back onto their queue's streams with attempts reset.
-- KEYS[1..3] = the high, normal and low streams, KEYS[4] = the dead-letter stream
-- ARGV = the dead entry ids to replay
-- Returns the number of entries replayed (ids not found are skipped).
local stream_of = {high = 1, normal = 2, low = 3}
local n = 0
for _, id in ipairs(ARGV) do
  local found = redis.call('XRANGE', KEYS[4], id, id)
  if #found == 1 then
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
    redis.call('XDEL', KEYS[4], id)
    n = n + 1
  end
end
return n
