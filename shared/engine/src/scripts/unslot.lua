-- Free the limit slots of jobs whose handler has ended, before their outcome is recorded: the
-- limits count jobs running, and recording is batched (tens of ms), which must not throttle the
-- next starts. The lease itself stays until the outcome is recorded, and a slot is freed once
-- whichever script gets there first (`free_slot` acts only if it removes the entry).
-- Only jobs this worker still holds are touched (a rescued job's slot was freed by the rescue,
-- and a re-claimed one holds the slot of its new lease).
-- KEYS[1] owners HASH  KEYS[2] slots HASH  KEYS[3] running HASH  KEYS[4] ring ZSET
-- KEYS[5] parked ZSET  KEYS[6] per-key ready prefix
-- ARGV[1] worker id   ARGV[2..] job ids
-- Returns the number of slots freed.
local S = { slots = KEYS[2], running = KEYS[3], ring = KEYS[4], parked = KEYS[5],
  kready = KEYS[6] }
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[1], id) == ARGV[1] and free_slot(S, id) then n = n + 1 end
end
return n
