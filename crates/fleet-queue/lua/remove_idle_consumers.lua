-- Removes a queue's idle consumers that hold nothing, atomically over its streams.
-- XGROUP DELCONSUMER drops whatever the consumer holds: an entry it was served is then in nobody's
-- pending list and behind the group's last-delivered id, so it is never delivered again. Checked
-- and deleted in one script, no read can be served between the check and the delete.
-- KEYS = the queue's streams, one per priority level
-- ARGV[1] = idle threshold in ms
-- A consumer is one name across the streams and their groups: it goes only when it holds nothing
-- on any of them and has been idle on every one for at least the threshold (a consumer reading
-- only `high` is idle on the others, yet alive).
-- The work is bounded by the queue's groups and consumers (XINFO GROUPS, XINFO CONSUMERS), which
-- this script itself keeps to the live fleet.
-- Returns {dropped, name, ...}: the names removed, after the number of pending entries the
-- deletes reported dropping, which is 0 unless this script is wrong (the caller reports it).

local threshold = tonumber(ARGV[1])

-- A flat XINFO reply {k1, v1, k2, v2, ...} as a table.
local function fields(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- Where each name is registered, what it holds and how long it has been idle.
local seen, order = {}, {}
for s = 1, #KEYS do
  if redis.call('EXISTS', KEYS[s]) == 1 then
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[s])) do
      local group = fields(g)['name']
      for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[s], group)) do
        local info = fields(c)
        local name = info['name']
        local entry = seen[name]
        if not entry then
          entry = {pending = 0, idle = info['idle'], at = {}}
          seen[name] = entry
          order[#order + 1] = name
        end
        entry.pending = entry.pending + info['pending']
        if info['idle'] < entry.idle then entry.idle = info['idle'] end
        entry.at[#entry.at + 1] = {KEYS[s], group}
      end
    end
  end
end

local out = {0}
for _, name in ipairs(order) do
  local entry = seen[name]
  if entry.pending == 0 and entry.idle >= threshold then
    for _, at in ipairs(entry.at) do
      out[1] = out[1] + redis.call('XGROUP', 'DELCONSUMER', at[1], at[2], name)
    end
    out[#out + 1] = name
  end
end
return out
