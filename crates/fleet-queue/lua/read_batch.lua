-- Reads up to a batch of new entries across the three priority streams of a queue, in one round trip.
-- KEYS[1..3] = the high, normal and low streams, KEYS[4] = the queue's paused flag
-- ARGV[1] = group, ARGV[2] = consumer, ARGV[3..5] = first-pass quota of each stream, ARGV[6] = batch size
-- Returns {-1} when the queue is paused, else a list of {stream index (1..3), entries} pairs, where
-- entries is XREADGROUP's list of {id, {field, value, ...}}.
-- The first pass gives each stream its quota (strict mode: the whole batch, highest first;
-- weighted mode: its share, so low is never starved); the second pass fills what is left,
-- highest priority first.
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {-1}
end
local total = tonumber(ARGV[6])
local got = 0
local out = {}
local function take(i, want)
  if want <= 0 then return end
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', KEYS[i], '>')
  if r and r[1] and #r[1][2] > 0 then
    out[#out + 1] = {i, r[1][2]}
    got = got + #r[1][2]
  end
end
for i = 1, 3 do
  take(i, math.min(tonumber(ARGV[2 + i]), total - got))
end
for i = 1, 3 do
  take(i, total - got)
end
return out
