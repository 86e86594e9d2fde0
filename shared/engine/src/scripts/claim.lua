-- Claim up to N ready jobs for one worker: pop the best-scored ids, lease them to the worker
-- and count the attempt, all at once so a crash can never leave a popped job unleased (which
-- would lose it).
-- KEYS[1] ready ZSET   KEYS[2] payloads HASH   KEYS[3] attempts HASH
-- KEYS[4] leased ZSET  KEYS[5] owners HASH   KEYS[6] paused flag (STRING)
-- ARGV[1] lease ttl ms   ARGV[2] worker id   ARGV[3] max jobs
-- Returns a flat array: id, attempt, payload, id, attempt, payload, ...
-- A paused queue hands out nothing. Checked here, in the same atomic step as the pop, so a
-- pause takes effect on the very next claim of every worker (no flag polling).
if redis.call('EXISTS', KEYS[6]) == 1 then return {} end
local t = redis.call('TIME')
local expiry = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1]))
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[3])
local out = {}
for i = 1, #popped, 2 do
  local id = popped[i]
  local payload = redis.call('HGET', KEYS[2], id)
  -- No payload: the job was cancelled or finished meanwhile; its id was a leftover.
  if payload then
    local attempt = redis.call('HINCRBY', KEYS[3], id, 1)
    redis.call('ZADD', KEYS[4], expiry, id)
    redis.call('HSET', KEYS[5], id, ARGV[2])
    out[#out + 1] = id
    out[#out + 1] = attempt
    out[#out + 1] = payload
  end
end
return out
