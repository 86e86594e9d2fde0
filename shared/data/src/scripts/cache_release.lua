-- End a single-flight rebuild: clear the marker only if it still names this job, so a newer
-- rebuild's marker is never removed by an old job.
-- KEYS[1] rebuild STRING   ARGV[1] job id
-- Returns 1 when cleared.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
