-- Claim due in-flight jobs for one poll. ARGV: job_id ('' = any), now, claim_until, limit, tolerance.
-- The poll's own job must be due, else nothing is claimed (someone else re-scheduled it). Claimed jobs get
-- score claim_until so no other poll takes them; the claimer schedules their next poll.
local key = P .. 'inflight'
local jid = ARGV[1]
local now = tonumber(ARGV[2])
local tol = tonumber(ARGV[5])
local out = {}
if jid ~= '' then
  local sc = redis.call('ZSCORE', key, jid)
  if not sc or tonumber(sc) > now + tol then return out end
  redis.call('ZADD', key, ARGV[3], jid)
  table.insert(out, jid)
end
local limit = tonumber(ARGV[4])
if limit > #out then
  local due = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit - #out)
  for _, other in ipairs(due) do
    if other ~= jid then
      redis.call('ZADD', key, ARGV[3], other)
      table.insert(out, other)
    end
  end
end
return out
