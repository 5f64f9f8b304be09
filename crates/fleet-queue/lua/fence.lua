-- The fence before an effect that must happen at most once (a provider send): confirms that this
-- consumer still holds the entry, and marks the job "effect under way" unless another delivery's
-- mark says its attempt may still be in doubt.
-- KEYS[1] = the stream the entry was read from, KEYS[2] = the job's fence key
-- ARGV[1] = group, ARGV[2] = entry id, ARGV[3] = this consumer, ARGV[4] = mark TTL in ms,
-- ARGV[5] = how old another holder's mark must be before it is taken over, in ms
-- Returns {1} when the effect may go ahead (the entry's lease renewed, the mark now ours),
-- {0} when the entry is no longer pending for this consumer (reclaimed: another worker has it),
-- {2, holder, age ms} when another delivery marked it less than ARGV[5] ago and its outcome is not
-- recorded yet (it may be frozen, or mid-send): the caller waits instead of acting.
-- The mark names the delivery, `<consumer>/<entry id>`, not only the consumer: a process frozen
-- past its lease wakes up with its first attempt still in flight and may read the job's reclaimed
-- copy under the same consumer name; that copy must wait for the first attempt's record too.
-- XCLAIM ... JUSTID answers only ids still pending for the group; no other consumer claims our
-- ids by id, so an answered id is ours.
local owned = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
if #owned == 0 then
  return {0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local delivery = ARGV[3] .. '/' .. ARGV[2]
local mark = redis.call('GET', KEYS[2])
if mark then
  -- `<delivery>|<ms>`, split at the last '|' (a consumer name may hold one).
  local holder, at = string.match(mark, '^(.*)|(%d+)$')
  if holder then
    local age = now - tonumber(at)
    if holder ~= delivery and age < tonumber(ARGV[5]) then
      return {2, holder, age}
    end
  end
end
redis.call('SET', KEYS[2], delivery .. '|' .. now, 'PX', ARGV[4])
return {1}
