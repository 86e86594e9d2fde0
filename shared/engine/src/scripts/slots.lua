-- Prelude shared by the scripts that claim, place or free jobs (prepended to each of them, see
-- queue.rs): limit slots and the per-key ready sets. Each script builds the table `S` of the
-- key names these functions use from its own KEYS, so the key list stays explicit per script.
--   S.ready      ready ZSET (jobs without a limit key)
--   S.slots      HASH id -> limit key ('' for none): the slot of each leased job
--   S.running    HASH limit key -> jobs running
--   S.job_keys   HASH id -> limit key of each keyed job Redis holds
--   S.ring       ZSET limit key -> turn: keys with ready jobs, round-robin order
--   S.parked     ZSET limit key -> ms before which the key starts nothing
--   S.kready     prefix of the per-key ready ZSETs (carries the queue's hash tag)
--   S.kcount     STRING number of jobs in the per-key ready sets

-- Put `key` at the end of the ring unless it is already there or parked (a parked key comes
-- back by itself when its time is up).
local function ring_enter(S, key)
  if redis.call('ZSCORE', S.parked, key) or redis.call('ZSCORE', S.ring, key) then return end
  local tail = redis.call('ZRANGE', S.ring, -1, -1, 'WITHSCORES')
  local turn = 0
  if #tail > 0 then turn = tonumber(tail[2]) + 1 end
  redis.call('ZADD', S.ring, turn, key)
end

-- Make `id` ready with `score`: in its key's ready set (and the key in the ring), or in the
-- queue's ready set when it has no limit key.
local function place_ready(S, id, score)
  local key = redis.call('HGET', S.job_keys, id)
  if key then
    if redis.call('ZADD', S.kready .. key, score, id) == 1 then redis.call('INCR', S.kcount) end
    ring_enter(S, key)
  else
    redis.call('ZADD', S.ready, score, id)
  end
end

-- Take `id` out of the ready sets (its key stays known: the caller forgets it when the job
-- leaves Redis). Returns 1 if it was ready.
local function forget_ready(S, id)
  local removed = redis.call('ZREM', S.ready, id)
  local key = redis.call('HGET', S.job_keys, id)
  if key then
    if redis.call('ZREM', S.kready .. key, id) == 1 then
      removed = 1
      redis.call('DECR', S.kcount)
      if redis.call('EXISTS', S.kready .. key) == 0 then redis.call('ZREM', S.ring, key) end
    end
  end
  return removed
end

-- Free the limit slot of `id` if it holds one. HDEL decides, so a second call (a retried
-- script, the rescuer after the worker) frees nothing: the counters cannot go negative or leak.
-- A key parked out of the ring at its key_concurrency enters it again.
local function free_slot(S, id)
  local key = redis.call('HGET', S.slots, id)
  if not key then return false end
  redis.call('HDEL', S.slots, id)
  if key ~= '' then
    if redis.call('HINCRBY', S.running, key, -1) <= 0 then redis.call('HDEL', S.running, key) end
    if redis.call('EXISTS', S.kready .. key) == 1 then ring_enter(S, key) end
  end
  return key
end

