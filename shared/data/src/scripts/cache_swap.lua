-- Swap a dataset's cache to a fully written new version, atomically, so readers see the old
-- version or the new one and never a half-built or empty cache. Compare-and-set: if another
-- rebuild swapped first, nothing changes and the caller re-reads `current` and tries again.
-- KEYS[1] current STRING   KEYS[2] new version HASH   KEYS[3] old version HASH (or any key
--         when there is none)
-- ARGV[1] the old version the caller read ('' when none)   ARGV[2] the new version
-- ARGV[3] seconds the old version stays readable (readers that just read `current`)
-- Returns 1 when swapped, 0 when `current` changed meanwhile.
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then
  return 0
end
redis.call('PERSIST', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[1] ~= '' then
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
end
return 1
