-- Renew the leases one worker still holds, and tell it which jobs it lost (its lease was
-- rescued, or Redis lost its data) and which should stop (cancel requested).
-- KEYS[1] leased ZSET   KEYS[2] owners HASH   KEYS[3] cancels SET
-- ARGV[1] lease ttl ms   ARGV[2] worker id   ARGV[3..] job ids
-- Returns { lost ids, cancel-requested ids }
local t = redis.call('TIME')
local expiry = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1]))
local lost, cancel = {}, {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[2] then
    redis.call('ZADD', KEYS[1], expiry, id)
    if redis.call('SISMEMBER', KEYS[3], id) == 1 then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return { lost, cancel }
