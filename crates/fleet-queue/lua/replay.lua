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
      local k = f[i]
      if k == 'prio' then
        idx = stream_of[f[i + 1]] or 2
      elseif k == 'a' then
        out[#out + 1] = 'a'
        out[#out + 1] = '0'
      elseif k ~= 'reason' and k ~= 'error' and k ~= 'orig' and k ~= 'died' then
        out[#out + 1] = k
        out[#out + 1] = f[i + 1]
      end
    end
    redis.call('XADD', KEYS[idx], '*', unpack(out))
    redis.call('XDEL', KEYS[4], id)
    n = n + 1
  end
end
return n
