-- Cancel one job in Redis after MongoDB recorded the cancellation (or the request): a waiting
-- job is removed; a running one is flagged and its worker told over pub/sub (the flag is the
-- fallback the worker's heartbeat reads if the message is missed).
-- KEYS[1] ready ZSET  KEYS[2] scheduled ZSET  KEYS[3] payloads HASH  KEYS[4] attempts HASH
-- KEYS[5] leased ZSET KEYS[6] cancels SET   KEYS[7] retrying SET  KEYS[8] job_keys HASH
-- KEYS[9] ring ZSET   KEYS[10] parked ZSET  KEYS[11] per-key ready prefix
-- KEYS[12] per-key ready count
-- ARGV[1] job id   ARGV[2] cancel channel
-- Returns 'removed', 'signalled' or 'absent'.
local S = { ready = KEYS[1], job_keys = KEYS[8], ring = KEYS[9], parked = KEYS[10],
  kready = KEYS[11], kcount = KEYS[12] }
local id = ARGV[1]
if redis.call('ZSCORE', KEYS[5], id) then
  redis.call('SADD', KEYS[6], id)
  redis.call('PUBLISH', ARGV[2], id)
  return 'signalled'
end
local waiting = forget_ready(S, id) + redis.call('ZREM', KEYS[2], id)
if waiting > 0 then
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('SREM', KEYS[7], id)
  redis.call('HDEL', KEYS[8], id)
  return 'removed'
end
return 'absent'
