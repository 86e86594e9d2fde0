-- A handler answered RateLimited (an upstream said "too many requests"): after MongoDB
-- recorded the job `scheduled` again with its attempt given back, move it from the lease to
-- the schedule set without charging the attempt, free its limit slot, and hold its limit key
-- (or the whole queue, for a job without a key) until the job's next run time, so its
-- siblings do not hit the upstream meanwhile. Only jobs this worker still holds are moved.
-- KEYS[1] leased ZSET   KEYS[2] owners HASH   KEYS[3] attempts HASH   KEYS[4] scheduled ZSET
-- KEYS[5] slots HASH    KEYS[6] running HASH  KEYS[7] ring ZSET       KEYS[8] parked ZSET
-- KEYS[9] per-key ready prefix   KEYS[10] held flag (STRING)   KEYS[11] cancels SET
-- ARGV[1] worker id   ARGV[2] wake channel   ARGV[3..] id, run_at ms, id, run_at ms, ...
-- Returns how many jobs were moved.
local S = { slots = KEYS[5], running = KEYS[6], ring = KEYS[7], parked = KEYS[8],
  kready = KEYS[9] }
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[1] then
    local until_ms = tonumber(ARGV[i + 1])
    local key = redis.call('HGET', KEYS[5], id)
    if key and key ~= '' then
      -- GT: a longer hold already in place stays.
      redis.call('ZADD', KEYS[8], 'GT', ARGV[i + 1], key)
      if redis.call('ZSCORE', KEYS[8], key) then redis.call('ZREM', KEYS[7], key) end
    elseif until_ms > now and redis.call('PTTL', KEYS[10]) < until_ms - now then
      redis.call('SET', KEYS[10], '1', 'PX', string.format('%.0f', until_ms - now))
    end
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('SREM', KEYS[11], id)
    if tonumber(redis.call('HGET', KEYS[3], id) or '0') > 0 then
      redis.call('HINCRBY', KEYS[3], id, -1)
    end
    free_slot(S, id)
    redis.call('ZADD', KEYS[4], ARGV[i + 1], id)
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('PUBLISH', ARGV[2], 's')
end
return moved
