-- Move due jobs from the schedule set to the ready set (or their key's), earliest first, at
-- most ARGV[1] per call so a million due jobs are promoted in bounded steps instead of one
-- giant script.
-- KEYS[1] scheduled ZSET   KEYS[2] ready ZSET   KEYS[3] payloads HASH   KEYS[4] retrying SET
-- KEYS[5] job_keys HASH    KEYS[6] ring ZSET    KEYS[7] parked ZSET
-- KEYS[8] per-key ready prefix   KEYS[9] per-key ready count
-- ARGV[1] limit   ARGV[2] wake channel
-- Returns { promoted ids, ms until the next scheduled job or -1 when none }
local S = { ready = KEYS[2], job_keys = KEYS[5], ring = KEYS[6], parked = KEYS[7],
  kready = KEYS[8], kcount = KEYS[9] }
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[1])
local ids = {}
for i = 1, #due, 2 do
  local id, run_at = due[i], tonumber(due[i + 1])
  redis.call('ZREM', KEYS[1], id)
  redis.call('SREM', KEYS[4], id)
  local payload = redis.call('HGET', KEYS[3], id)
  if payload then
    local p = tonumber(cjson.decode(payload).priority) or 0
    if p < 0 then p = 0 elseif p > 9 then p = 9 end
    -- Same formula as job::ready_score: priority band first, then ready time.
    place_ready(S, id, string.format('%.0f', (9 - p) * 1e13 + run_at))
    ids[#ids + 1] = id
  end
end
if #ids > 0 then redis.call('PUBLISH', ARGV[2], 'r') end
local next_due = -1
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #head > 0 then
  next_due = tonumber(head[2]) - now
  if next_due < 0 then next_due = 0 end
end
return { ids, string.format('%.0f', next_due) }
