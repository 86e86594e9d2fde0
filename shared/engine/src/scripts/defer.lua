-- Give leased jobs back without charging the attempt, to run later: the worker that claimed
-- them does not serve their kind, so they wait in the schedule set for a worker that does.
-- Only jobs this worker still holds are moved (a rescued or re-claimed job is left alone);
-- their limit slots are freed.
-- KEYS[1] leased ZSET   KEYS[2] owners HASH   KEYS[3] attempts HASH   KEYS[4] scheduled ZSET
-- KEYS[5] slots HASH    KEYS[6] running HASH  KEYS[7] ring ZSET       KEYS[8] parked ZSET
-- KEYS[9] per-key ready prefix
-- ARGV[1] worker id   ARGV[2] wake channel   ARGV[3..] id, run_at ms, id, run_at ms, ...
-- Returns how many jobs were moved.
local S = { slots = KEYS[5], running = KEYS[6], ring = KEYS[7], parked = KEYS[8],
  kready = KEYS[9] }
local moved = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[1] then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
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
