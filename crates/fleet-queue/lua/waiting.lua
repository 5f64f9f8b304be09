-- The exact number of entries waiting in one priority stream (present, and after the last-delivered
-- id of the group furthest ahead; every entry while the stream has no group), kept O(1) by the
-- group's own read counter once that counter is known to be right. See src/waiting.rs for why and
-- for the proof of the recount; in short:
--   * Redis 7.0's `lag` (entries-added - entries-read) is wrong after a restart or a failover (the
--     replayed XCLAIM ... LASTID moves last-delivered-id but not entries-read), missing while a
--     deleted entry lies ahead of the group, and counts deleted entries as unread. So it is
--     trusted only after this script set entries-read itself, on this very server (run id and
--     replication id unchanged), with nothing deleted ahead since.
--   * Otherwise the waiting entries are recounted: the client reads pages of ids with XRANGE
--     (bounded by COUNT) and commits each page's count here; deliveries meanwhile are measured by
--     the growth of entries-read (Redis adds one per delivered entry once no tombstone lies ahead,
--     which is why the stream's max-deleted-entry-id is lowered first); appends are measured by
--     entries-added. Once the count reaches the frontier, the group's entries-read is set to
--     entries-added - waiting, and later calls are O(1) again.
-- KEYS[1] = the stream, KEYS[2] = its count state (a hash)
-- ARGV[1] = snapshot id of a counted page, or '' for none
-- ARGV[2] = the page's start (exclusive), ARGV[3] = its end (inclusive), ARGV[4] = entries in it
-- Returns {exact (1 or 0), waiting (exact, or a lower bound while counting), cursor, frontier,
--          snapshot id, repaired (1 when this call finished a recount)}.
local stream, state = KEYS[1], KEYS[2]

local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function cmp(a, b)
  local am, as = id_parts(a)
  local bm, bs = id_parts(b)
  if am ~= bm then
    return am < bm and -1 or 1
  end
  if as ~= bs then
    return as < bs and -1 or 1
  end
  return 0
end

local function as_map(flat)
  local t = {}
  for i = 1, #flat, 2 do
    t[flat[i]] = flat[i + 1]
  end
  return t
end

local function exact(n, repaired)
  return {1, n, '', '', '', repaired or 0}
end

if redis.call('EXISTS', stream) == 0 then
  return exact(0)
end

local info = as_map(redis.call('XINFO', 'STREAM', stream))
local length = tonumber(info['length'])
local added = tonumber(info['entries-added'])
local max_deleted = info['max-deleted-entry-id']

-- The group furthest ahead: what follows its last-delivered id was delivered to no group.
local ref, others = nil, {}
for _, flat in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local g = as_map(flat)
  if ref == nil or cmp(g['last-delivered-id'], ref['last-delivered-id']) > 0 then
    if ref then
      table.insert(others, ref)
    end
    ref = g
  else
    table.insert(others, g)
  end
end
if ref == nil then
  return exact(length)
end
if length == 0 then
  return exact(0)
end
local first = info['first-entry'][1]
local last = info['last-entry'][1]
local g = ref['last-delivered-id']
if cmp(g, last) >= 0 then
  return exact(0)
end
if cmp(first, g) > 0 then
  return exact(length)
end

-- Which server, and which history of it: a restart changes the run id, a failover the
-- replication id; either may have replayed deliveries without their read counts.
local server = redis.call('INFO', 'server', 'replication')
local token = (string.match(server, 'run_id:(%w+)') or '?') .. ':' ..
  (string.match(server, 'master_replid:(%w+)') or '?')
local st = as_map(redis.call('HGETALL', state))
local er = ref['entries-read']
if er then
  er = tonumber(er)
end
-- Redis's own test (streamRangeHasTombstones): a deletion at or after the group's position.
local tombstone_ahead = max_deleted ~= '0-0' and cmp(max_deleted, first) >= 0 and
  cmp(max_deleted, g) >= 0

-- Trusted only while nothing was deleted since the repair (max-deleted-entry-id unchanged): Redis
-- ignores a deletion once every entry before it is gone (first-entry past it, or the stream
-- empty), and its read counter then counts the deleted entry as unread.
if st['phase'] == 'trusted' and st['tok'] == token and st['grp'] == ref['name'] and er and
  max_deleted == st['m'] and not tombstone_ahead and cmp(g, st['g']) >= 0 and
  er >= tonumber(st['er']) then
  local w = added - er
  if w >= 0 and w <= length then
    return exact(w)
  end
end

local counting = st['phase'] == 'counting' and st['tok'] == token and
  st['grp'] == ref['name'] and er and max_deleted == st['m'] and
  er >= tonumber(st['ber']) and cmp(g, st['gb']) >= 0 and cmp(g, st['e0']) < 0 and
  added >= tonumber(st['a0'])
if not counting then
  if tombstone_ahead then
    -- Reads count themselves only when no deletion lies ahead of them. Forgetting the deletions
    -- changes nothing else: max-deleted-entry-id only serves these read counts. Another group
    -- whose counter would now read wrong is told it has none (what Redis says anyway while a
    -- deletion lies ahead of it).
    for _, o in ipairs(others) do
      if o['entries-read'] and cmp(o['last-delivered-id'], max_deleted) <= 0 then
        redis.call('XGROUP', 'SETID', stream, o['name'], o['last-delivered-id'])
      end
    end
    redis.call('XSETID', stream, info['last-generated-id'], 'MAXDELETEDID', '0-1')
    max_deleted = '0-1'
  end
  -- Any valid value works as the base: only its growth is used. This one shows as a lag of
  -- `length` (an upper bound) to whoever reads Redis's lag meanwhile.
  er = added - length
  redis.call('XGROUP', 'SETID', stream, ref['name'], g, 'ENTRIESREAD', er)
  local sid = redis.call('HINCRBY', state, 'sid', 1)
  redis.call('HSET', state, 'phase', 'counting', 'tok', token, 'grp', ref['name'],
    'e0', last, 'a0', added, 'm', max_deleted, 'c', g, 'k', 0, 'ber', er, 'gb', g)
  st = as_map(redis.call('HGETALL', state))
end

local c, k, ber = st['c'], tonumber(st['k']), tonumber(st['ber'])
if cmp(g, c) > 0 then
  -- The group overtook the count: what lies before it is delivered; count on from there.
  c, k, ber = g, 0, er
  redis.call('HSET', state, 'c', c, 'k', 0, 'ber', ber, 'gb', g)
elseif ARGV[1] == st['sid'] and ARGV[2] == c and cmp(ARGV[3], c) > 0 and
  cmp(ARGV[3], st['e0']) <= 0 then
  c, k = ARGV[3], k + tonumber(ARGV[4])
  redis.call('HSET', state, 'c', c, 'k', k)
end

local w = k - (er - ber) + (added - tonumber(st['a0']))
if cmp(c, st['e0']) >= 0 then
  if w < 0 or w > length then
    -- Impossible if the reasoning in src/waiting.rs holds; start over rather than repair wrong.
    redis.call('HSET', state, 'phase', 'none')
    return {0, 0, '', '', '', 0}
  end
  redis.call('XGROUP', 'SETID', stream, ref['name'], g, 'ENTRIESREAD', added - w)
  redis.call('DEL', state)
  redis.call('HSET', state, 'phase', 'trusted', 'tok', token, 'grp', ref['name'], 'g', g,
    'er', added - w, 'm', max_deleted, 'sid', st['sid'])
  return exact(w, 1)
end
return {0, math.max(w, 0), c, st['e0'], st['sid'], 0}
