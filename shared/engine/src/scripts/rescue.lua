-- Take jobs whose lease expired (their worker stopped heartbeating: it died or hung) into the
-- rescued set, and re-take rescued jobs that an earlier rescuer left unfinished for ARGV[2] ms.
-- The rescuer then records the failed attempt in MongoDB and reschedules or forgets each job;
-- keeping them in `rescued` until then means a rescuer that dies mid-way loses nothing.
-- KEYS[1] leased ZSET  KEYS[2] owners HASH  KEYS[3] rescued ZSET  KEYS[4] payloads HASH
-- KEYS[5] attempts HASH  KEYS[6] slots HASH  KEYS[7] running HASH  KEYS[8] ring ZSET
-- KEYS[9] parked ZSET    KEYS[10] per-key ready prefix
-- An expired lease frees its limit slot here, so a SIGKILLed worker's slots come back within
-- one lease period, before its jobs' lost attempts are even recorded.
-- ARGV[1] limit   ARGV[2] ms after which a rescued job counts as abandoned by its rescuer
-- Returns a flat array: id, attempt, payload, ...
local S = { slots = KEYS[6], running = KEYS[7], ring = KEYS[8], parked = KEYS[9],
  kready = KEYS[10] }
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = string.format('%.0f', now)
local limit = tonumber(ARGV[1])
local out = {}
local function take(id)
  local payload = redis.call('HGET', KEYS[4], id)
  if not payload then
    redis.call('ZREM', KEYS[3], id)
    return
  end
  redis.call('ZADD', KEYS[3], now_s, id)
  out[#out + 1] = id
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[5], id) or '0')
  out[#out + 1] = payload
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_s, 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  free_slot(S, id)
  take(id)
end
local room = limit - #expired
if room > 0 then
  local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', string.format('%.0f', now - tonumber(ARGV[2])), 'LIMIT', 0, room)
  for _, id in ipairs(stale) do take(id) end
end
return out
