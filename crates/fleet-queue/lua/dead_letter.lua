-- Acknowledges an entry and appends it to the dead-letter stream, atomically.
-- KEYS[1] = the stream the entry was read from, KEYS[2] = the dead-letter stream
-- ARGV[1] = group, ARGV[2] = entry id, ARGV[3] = dead-letter stream cap (approximate MAXLEN),
-- ARGV[4..] = the dead entry's fields
-- Returns 1 when dead-lettered, 0 when the entry was no longer pending for this group.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
return 1
