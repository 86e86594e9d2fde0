-- Claim up to N ready jobs for one worker: pop the best ids, lease them to the worker, count
-- the attempt and take their limit slots, all at once so a crash can never leave a popped job
-- unleased (which would lose it) nor a slot taken without a lease (which would leak it).
-- KEYS[1] ready ZSET   KEYS[2] payloads HASH   KEYS[3] attempts HASH
-- KEYS[4] leased ZSET  KEYS[5] owners HASH   KEYS[6] paused flag (STRING)
-- KEYS[7] limits HASH  KEYS[8] slots HASH    KEYS[9] running HASH   KEYS[10] ring ZSET
-- KEYS[11] parked ZSET KEYS[12] per-key ready prefix  KEYS[13] per-key ready count
-- KEYS[14] starts ZSET KEYS[15] per-key starts prefix KEYS[16] held flag (STRING)
-- KEYS[17] epoch (STRING)
-- ARGV[1] lease ttl ms   ARGV[2] worker id   ARGV[3] max jobs
-- Returns { flat array id, attempt, payload, ..., wait } where wait is -1, or the ms after
-- which limits may let more of the queue's ready jobs start (the caller polls sooner).
--
-- Limits are checked here, in the same atomic step as the pop, so no two workers can both
-- see a free slot and take it: concurrency is the size of `slots` (one entry per leased job),
-- rates are logs of spaced start slots (below). Jobs with a limit key wait in one ready set per key;
-- the claim takes them round-robin over the ring of keys (one job per key per turn), so a key
-- with 100,000 jobs does not starve a key with 10, and alternates them with the jobs that have
-- no key. Priorities order jobs within a key, not across keys.
--
-- A paused queue hands out nothing. Checked here too, so a pause takes effect on the very
-- next claim of every worker (no flag polling).
if redis.call('EXISTS', KEYS[6]) == 1 then return { {}, -1 } end
-- A queue without its epoch lost its Redis data (or is new to this Redis): its pause flag and
-- limits may not be back yet, and jobs pushed meanwhile (a submission, the anti-entropy sweep)
-- must not run unpaused or unlimited. The reconciler restores pause and limits, rebuilds the
-- queue, and sets the epoch last; until then hand out nothing, and poll soon if jobs wait.
if redis.call('EXISTS', KEYS[17]) == 0 then
  if redis.call('ZCARD', KEYS[1]) > 0 then return { {}, 200 } end
  return { {}, -1 }
end
local S = { ready = KEYS[1], slots = KEYS[8], running = KEYS[9], ring = KEYS[10],
  parked = KEYS[11], kready = KEYS[12], kcount = KEYS[13] }
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = string.format('%.0f', now)
local expiry = string.format('%.0f', now + tonumber(ARGV[1]))
local budget = tonumber(ARGV[3])
local wait = -1
local function limited(ms)
  if ms < 1 then ms = 1 end
  if wait < 0 or ms < wait then wait = ms end
end
-- Whether anything is ready at all, so a limited but empty queue does not make workers poll.
local function has_ready()
  return redis.call('ZCARD', KEYS[1]) > 0 or tonumber(redis.call('GET', KEYS[13]) or '0') > 0
end
local lim = {}
local raw = redis.call('HGETALL', KEYS[7])
for i = 1, #raw, 2 do lim[raw[i]] = tonumber(raw[i + 1]) end
-- A job without a limit key answered RateLimited: the whole queue waits.
local held = redis.call('PTTL', KEYS[16])
if held > 0 then
  if has_ready() then return { {}, held } end
  return { {}, -1 }
end
if lim.concurrency then
  local room = lim.concurrency - redis.call('HLEN', KEYS[8])
  if room < budget then
    budget = room
    -- A slot frees when a job of the queue ends, which no timer predicts: poll soon.
    if budget <= 0 and has_ready() then limited(25) end
  end
end
-- Rates are smooth (GCRA): starts are spaced `per / max` apart, with a tolerance of RATE_EARLY ms,
-- so a batch of starts cannot land at a window's edge and double up with the next batch. Each
-- start is logged at its slot time (`at`), never earlier than the previous slot plus the
-- spacing; the log's newest entry is the next free slot.
local RATE_EARLY = 10
-- How many starts `log` allows now, and the first slot time (or the wait when none).
local function rate_room(log, max, per)
  local gap = per / max
  redis.call('ZREMRANGEBYSCORE', log, '-inf', string.format('%.3f', now - per))
  local at = now
  local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  if #last > 0 and tonumber(last[2]) + gap > at then at = tonumber(last[2]) + gap end
  if at > now + RATE_EARLY then return 0, at - RATE_EARLY - now end
  return math.floor((now + RATE_EARLY - at) / gap) + 1, at
end
local rate_at, rate_gap = nil, nil
if lim.rate_max then
  local room, at = rate_room(KEYS[14], lim.rate_max, lim.rate_per_ms)
  if room < budget then
    budget = room
    if budget <= 0 and has_ready() then limited(at) end
  end
  if room > 0 then rate_at, rate_gap = at, lim.rate_per_ms / lim.rate_max end
end
if budget <= 0 then return { {}, wait } end

local out = {}
-- Slot time of the next start of the key being served (key_rate), set by next_keyed.
local key_rate_at = nil
-- Lease `id` (popped from a ready set) with the slot of `key`. False if it was a leftover id
-- (cancelled or finished meanwhile: no payload).
local function take(id, key)
  local payload = redis.call('HGET', KEYS[2], id)
  if not payload then return false end
  local attempt = redis.call('HINCRBY', KEYS[3], id, 1)
  redis.call('ZADD', KEYS[4], expiry, id)
  redis.call('HSET', KEYS[5], id, ARGV[2])
  redis.call('HSET', KEYS[8], id, key)
  if rate_at then
    redis.call('ZADD', KEYS[14], string.format('%.3f', rate_at), id .. ':' .. attempt)
    rate_at = rate_at + rate_gap
  end
  if key ~= '' then
    redis.call('HINCRBY', KEYS[9], key, 1)
    if key_rate_at then
      local starts = KEYS[15] .. key
      redis.call('ZADD', starts, string.format('%.3f', key_rate_at), id .. ':' .. attempt)
      redis.call('PEXPIRE', starts, lim.key_rate_per_ms + 2 * RATE_EARLY)
    end
  end
  out[#out + 1] = id
  out[#out + 1] = attempt
  out[#out + 1] = payload
  return true
end

-- Keys whose hold or rate window is over go back to the ring.
if redis.call('ZCARD', KEYS[11]) > 0 then
  local due = redis.call('ZRANGEBYSCORE', KEYS[11], '-inf', now_s, 'LIMIT', 0, 1000)
  for _, key in ipairs(due) do
    redis.call('ZREM', KEYS[11], key)
    if redis.call('EXISTS', KEYS[12] .. key) == 1 then ring_enter(S, key) end
  end
end

-- One job from the next key of the ring that may start one. Each key looked at leaves the
-- ring or goes to its end, so the scan is bounded; keys it skips are parked (held, or their
-- rate is used up: back when due) or left out (at key_concurrency: back when a slot frees).
local scans = 0
local scan_max = 2 * budget + 100
local function next_keyed()
  while scans < scan_max do
    scans = scans + 1
    local head = redis.call('ZRANGE', KEYS[10], 0, 0)
    if #head == 0 then return false end
    local key = head[1]
    local kready = KEYS[12] .. key
    local blocked = false
    if lim.key_concurrency and tonumber(redis.call('HGET', KEYS[9], key) or '0') >= lim.key_concurrency then
      redis.call('ZREM', KEYS[10], key)
      blocked = true
    elseif lim.key_rate_max then
      local room, at = rate_room(KEYS[15] .. key, lim.key_rate_max, lim.key_rate_per_ms)
      if room <= 0 then
        -- Parked until its next slot; back in the ring then.
        redis.call('ZREM', KEYS[10], key)
        redis.call('ZADD', KEYS[11], string.format('%.0f', now + at), key)
        limited(at)
        blocked = true
      else
        key_rate_at = at
      end
    end
    if not blocked then
      local p = redis.call('ZPOPMIN', kready, 1)
      if #p == 0 then
        redis.call('ZREM', KEYS[10], key)
      else
        redis.call('DECR', KEYS[13])
        if redis.call('EXISTS', kready) == 0 then
          redis.call('ZREM', KEYS[10], key)
        else
          local tail = redis.call('ZRANGE', KEYS[10], -1, -1, 'WITHSCORES')
          redis.call('ZADD', KEYS[10], tonumber(tail[2]) + 1, key)
        end
        if take(p[1], key) then return true end
      end
    end
  end
  return false
end

if redis.call('EXISTS', KEYS[10]) == 0 then
  -- No key has ready work: the plain path, one pop for the whole batch.
  local popped = redis.call('ZPOPMIN', KEYS[1], budget)
  for i = 1, #popped, 2 do take(popped[i], '') end
else
  local plain, keyed, taken = true, true, 0
  while taken < budget and (plain or keyed) do
    if plain then
      local p = redis.call('ZPOPMIN', KEYS[1], 1)
      if #p == 0 then plain = false elseif take(p[1], '') then taken = taken + 1 end
    end
    if keyed and taken < budget then
      if next_keyed() then taken = taken + 1 else keyed = false end
    end
  end
end
-- Keyed jobs left waiting because their keys are at key_concurrency: come back soon (a slot
-- of a key frees when one of its jobs ends, which no timer predicts).
if #out < 3 * budget and wait < 0 and tonumber(redis.call('GET', KEYS[13]) or '0') > 0 then
  limited(25)
end
-- Third: whether the queue caps running jobs (concurrency or key_concurrency), so the worker
-- frees these jobs' slots as soon as their handlers end; without such a limit the slots are
-- freed with the outcome, and the early release would be a wasted script call per batch.
local caps = (lim.concurrency or lim.key_concurrency) and 1 or 0
return { out, wait, caps }
