-- Give leased jobs back to the ready set without charging the attempt (graceful shutdown):
-- the attempt counter goes back down, so the job's next run has the same number, and the
-- limit slot is freed.
-- KEYS[1] leased ZSET  KEYS[2] owners HASH  KEYS[3] attempts HASH  KEYS[4] ready ZSET
-- KEYS[5] slots HASH   KEYS[6] running HASH KEYS[7] job_keys HASH  KEYS[8] ring ZSET
-- KEYS[9] parked ZSET  KEYS[10] per-key ready prefix  KEYS[11] per-key ready count
-- ARGV[1] worker id   ARGV[2] wake channel   then pairs: id, ready score
-- Returns the number of jobs released.
local S = { ready = KEYS[4], slots = KEYS[5], running = KEYS[6], job_keys = KEYS[7],
  ring = KEYS[8], parked = KEYS[9], kready = KEYS[10], kcount = KEYS[11] }
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[1] then
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    if tonumber(redis.call('HGET', KEYS[3], id) or '0') > 0 then
      redis.call('HINCRBY', KEYS[3], id, -1)
    end
    free_slot(S, id)
    place_ready(S, id, ARGV[i + 1])
    n = n + 1
  end
end
if n > 0 then redis.call('PUBLISH', ARGV[2], 'r') end
return n
