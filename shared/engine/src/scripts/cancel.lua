-- Cancel one job in Redis after MongoDB recorded the cancellation (or the request): a waiting
-- job is removed; a running one is flagged and its worker told over pub/sub (the flag is the
-- fallback the worker's heartbeat reads if the message is missed).
-- KEYS[1] ready ZSET  KEYS[2] scheduled ZSET  KEYS[3] payloads HASH  KEYS[4] attempts HASH
-- KEYS[5] leased ZSET KEYS[6] cancels SET   KEYS[7] retrying SET
-- ARGV[1] job id   ARGV[2] cancel channel
-- Returns 'removed', 'signalled' or 'absent'.
local id = ARGV[1]
local waiting = redis.call('ZREM', KEYS[1], id) + redis.call('ZREM', KEYS[2], id)
if waiting > 0 then
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('SREM', KEYS[7], id)
  return 'removed'
end
if redis.call('ZSCORE', KEYS[5], id) then
  redis.call('SADD', KEYS[6], id)
  redis.call('PUBLISH', ARGV[2], id)
  return 'signalled'
end
return 'absent'
