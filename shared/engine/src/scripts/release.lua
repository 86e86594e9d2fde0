-- Give leased jobs back to the ready set without charging the attempt (graceful shutdown):
-- the attempt counter goes back down, so the job's next run has the same number.
-- KEYS[1] leased ZSET  KEYS[2] owners HASH  KEYS[3] attempts HASH  KEYS[4] ready ZSET
-- ARGV[1] worker id   ARGV[2] wake channel   then pairs: id, ready score
-- Returns the number of jobs released.
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[1] then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    if tonumber(redis.call('HGET', KEYS[3], id) or '0') > 0 then
      redis.call('HINCRBY', KEYS[3], id, -1)
    end
    redis.call('ZADD', KEYS[4], ARGV[i + 1], id)
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[2], 'r') end
return n
