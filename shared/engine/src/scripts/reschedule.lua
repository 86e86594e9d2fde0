-- Move jobs to the schedule set for their next attempt, after MongoDB recorded `retrying`.
-- A worker moves jobs it leases; the rescuer (worker id '') moves jobs from the rescued set.
-- KEYS[1] leased ZSET  KEYS[2] owners HASH  KEYS[3] rescued ZSET  KEYS[4] scheduled ZSET
-- KEYS[5] cancels SET    KEYS[6] retrying SET (ids in the schedule set for a retry)
-- ARGV[1] worker id or ''   ARGV[2] wake channel   then pairs: id, run_at ms
-- Returns the number of jobs moved.
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
    redis.call('SREM', KEYS[5], id)
    redis.call('ZADD', KEYS[4], ARGV[i + 1], id)
    redis.call('SADD', KEYS[6], id)
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[2], 's') end
return n
