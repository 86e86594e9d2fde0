-- Forget jobs whose terminal state MongoDB has recorded: remove them from every structure of
-- the queue, and free their limit slot. Called only after the MongoDB write, so a crash before
-- it leaves the job leased (and rescued later) instead of lost.
-- KEYS[1] leased ZSET  KEYS[2] owners HASH   KEYS[3] payloads HASH  KEYS[4] attempts HASH
-- KEYS[5] cancels SET  KEYS[6] rescued ZSET  KEYS[7] ready ZSET     KEYS[8] scheduled ZSET
-- KEYS[9] retrying SET KEYS[10] slots HASH   KEYS[11] running HASH  KEYS[12] job_keys HASH
-- KEYS[13] ring ZSET   KEYS[14] parked ZSET  KEYS[15] per-key ready prefix
-- KEYS[16] per-key ready count
-- ARGV[1] worker id, or '' for the rescuer and the API   ARGV[2..] job ids
-- A job leased by ANOTHER worker is left alone: that worker holds a newer attempt (and the
-- slot of it) and will see the terminal state when it writes its own outcome.
-- Returns the number of jobs forgotten.
local S = { ready = KEYS[7], slots = KEYS[10], running = KEYS[11], job_keys = KEYS[12],
  ring = KEYS[13], parked = KEYS[14], kready = KEYS[15], kcount = KEYS[16] }
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local owner = redis.call('HGET', KEYS[2], id)
  if (not owner) or owner == ARGV[1] then
    free_slot(S, id)
    forget_ready(S, id)
    redis.call('HDEL', KEYS[12], id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('SREM', KEYS[5], id)
    redis.call('ZREM', KEYS[6], id)
    redis.call('ZREM', KEYS[8], id)
    redis.call('SREM', KEYS[9], id)
    n = n + 1
  end
end
return n
