-- Move jobs to the schedule set for their next attempt, after MongoDB recorded `retrying`.
-- A worker moves jobs it leases (freeing their limit slot); the rescuer (worker id '') moves
-- jobs from the rescued set (whose slot the rescue freed).
-- KEYS[1] leased ZSET  KEYS[2] owners HASH  KEYS[3] rescued ZSET  KEYS[4] scheduled ZSET
-- KEYS[5] cancels SET    KEYS[6] retrying SET (ids in the schedule set for a retry)
-- KEYS[7] slots HASH   KEYS[8] running HASH KEYS[9] ring ZSET      KEYS[10] parked ZSET
-- KEYS[11] per-key ready prefix
-- ARGV[1] worker id or ''   ARGV[2] wake channel   then pairs: id, run_at ms
-- Returns the number of jobs moved.
local S = { slots = KEYS[7], running = KEYS[8], ring = KEYS[9], parked = KEYS[10],
  kready = KEYS[11] }
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local ok = false
  if ARGV[1] == '' then
    ok = redis.call('ZREM', KEYS[3], id) == 1
  elseif redis.call('HGET', KEYS[2], id) == ARGV[1] then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    ok = true
  end
  if ok then
    free_slot(S, id)
    redis.call('SREM', KEYS[5], id)
    redis.call('ZADD', KEYS[4], ARGV[i + 1], id)
    redis.call('SADD', KEYS[6], id)
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[2], 's') end
return n
