-- Admission through two GCRA limits (a sender's rate and a per-recipient pair rate) with slot
-- reservations, shared by every replica.
--
-- A message that may not go now gets a reserved slot (the limit's theoretical arrival time moves
-- on, as if it had been sent then) and is told to wait until that slot; when it comes back, the
-- reservation lets it through without taking a second slot. So a backlog drains at exactly the
-- configured rate, each waiting message is looked at twice, and nothing spins. Slots are
-- reserved at most `horizon` ahead; a message beyond that waits without a reservation and asks
-- again, so later high-priority messages are not stuck behind hours of reservations.
-- The recipient limit is settled before the sender's: a message waiting for its recipient must
-- not hold a sender slot (that would stall every other recipient of the sender).
--
-- KEYS[1] = sender TAT, KEYS[2] = recipient TAT, KEYS[3] = this job's reservation
--   (all under one hash tag: `<prefix>:{rl:<sender scope>}:...`)
-- ARGV[1] = now in microseconds, or '' to use the Redis server's clock (one clock for all replicas)
-- ARGV[2] = sender emission interval (us), ARGV[3] = sender burst tolerance (us)
-- ARGV[4] = recipient emission interval (us, 0 = no recipient limit), ARGV[5] = its tolerance (us)
-- ARGV[6] = reservation horizon (us), ARGV[7] = grace (us): how late a reserved slot is honoured
-- Returns {allowed (0|1), wait_us, reserved (0|1), limit ('sender'|'recipient'|'')}.

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local s_int, s_tol = tonumber(ARGV[2]), tonumber(ARGV[3])
local r_int, r_tol = tonumber(ARGV[4]), tonumber(ARGV[5])
local horizon, grace = tonumber(ARGV[6]), tonumber(ARGV[7])

local function fmt(x) return string.format('%.0f', x) end

-- Stores a TAT that expires once it no longer constrains anything.
local function set_tat(key, tat)
  local ttl_ms = math.floor((tat - now) / 1000) + 1000
  redis.call('SET', key, fmt(tat), 'PX', ttl_ms)
end

local function reserve(slot, phase)
  local ttl_ms = math.floor((slot - now + grace) / 1000) + 1000
  redis.call('SET', KEYS[3], fmt(slot) .. ':' .. phase, 'PX', ttl_ms)
end

-- 1. A reservation made earlier for this job.
local recipient_done = (r_int <= 0)
local resv = redis.call('GET', KEYS[3])
if resv then
  local sep = string.find(resv, ':', 1, true)
  local slot = tonumber(string.sub(resv, 1, sep - 1))
  local phase = string.sub(resv, sep + 1)
  if now < slot then
    return {0, fmt(slot - now), 1, phase}
  end
  redis.call('DEL', KEYS[3])
  if now <= slot + grace then
    if phase == 'sender' then
      return {1, 0, 0, ''}
    end
    recipient_done = true
  end
  -- Too late: the slot went unused; ask again like a new message.
end

-- 2. The recipient limit.
local r_tat = nil
if not recipient_done then
  r_tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if r_tat < now then r_tat = now end
  local at = r_tat - r_tol
  if at > now then
    if at - now > horizon then
      return {0, fmt(at - now), 0, 'recipient'}
    end
    set_tat(KEYS[2], r_tat + r_int)
    reserve(at, 'recipient')
    return {0, fmt(at - now), 1, 'recipient'}
  end
end

-- 3. The sender limit.
local s_tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if s_tat < now then s_tat = now end
local at = s_tat - s_tol
if at < now then at = now end
if at - now > horizon then
  return {0, fmt(at - now), 0, 'sender'}
end
set_tat(KEYS[1], s_tat + s_int)
if r_tat then
  -- The recipient's slot is taken at the moment the message will really go.
  local t = r_tat
  if at > t then t = at end
  set_tat(KEYS[2], t + r_int)
end
if at > now then
  reserve(at, 'sender')
  return {0, fmt(at - now), 1, 'sender'}
end
return {1, 0, 0, ''}
