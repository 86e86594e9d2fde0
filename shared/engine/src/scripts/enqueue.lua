-- Add jobs to one queue unless Redis already holds them. Because an id already present is
-- skipped, the same script serves the API (new jobs) and the reconciler ("make sure every live
-- job of MongoDB is in Redis") without ever queueing a job twice.
-- KEYS[1] payloads HASH   KEYS[2] attempts HASH   KEYS[3] ready ZSET   KEYS[4] scheduled ZSET
-- KEYS[5] retrying SET (a scheduled job with attempts already started waits for a retry)
-- KEYS[6] job_keys HASH  KEYS[7] ring ZSET  KEYS[8] parked ZSET  KEYS[9] per-key ready prefix
-- KEYS[10] per-key ready count
-- ARGV[1] wake channel, then 6 values per job:
--   id, payload JSON, attempts already started, 'r' (ready) or 's' (scheduled), score
--   (the ready score, or run_at in ms), limit key ('' for none)
-- Returns the number of jobs added.
local S = { ready = KEYS[3], job_keys = KEYS[6], ring = KEYS[7], parked = KEYS[8],
  kready = KEYS[9], kcount = KEYS[10] }
local added, ready, sched = 0, 0, 0
for i = 2, #ARGV, 6 do
  local id = ARGV[i]
  if redis.call('HSETNX', KEYS[1], id, ARGV[i + 1]) == 1 then
    redis.call('HSET', KEYS[2], id, ARGV[i + 2])
    if ARGV[i + 5] ~= '' then redis.call('HSET', KEYS[6], id, ARGV[i + 5]) end
    if ARGV[i + 3] == 'r' then
      place_ready(S, id, ARGV[i + 4])
      ready = ready + 1
    else
      redis.call('ZADD', KEYS[4], ARGV[i + 4], id)
      if tonumber(ARGV[i + 2]) > 0 then redis.call('SADD', KEYS[5], id) end
      sched = sched + 1
    end
    added = added + 1
  end
end
if ready > 0 then redis.call('PUBLISH', ARGV[1], 'r') end
if sched > 0 then redis.call('PUBLISH', ARGV[1], 's') end
return added
