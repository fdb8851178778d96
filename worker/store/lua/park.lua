-- Park a queued job: store its task message and put it in its waiting set (its mode's, or its pinned upstream's) (or its paused batch's
-- held set). ARGV: job_id, message JSON, score. Returns 'parked' | 'held' | 'cancelled' | <status>.
local jid = ARGV[1]
local jkey = P .. 'job:' .. jid
local cur = redis.call('HGET', jkey, 'status')
if cur ~= 'queued' then return cur or '' end
if ARGV[2] ~= '' then redis.call('HSET', jkey, 'message', ARGV[2]) end
local mode = redis.call('HGET', jkey, 'mode') or 'fast'
local b = redis.call('HGET', jkey, 'batch_id')
if b and b ~= '' then
  local bst = redis.call('HGET', P .. 'batch:' .. b, 'status')
  if bst == 'cancelled' then return 'cancelled' end
  if redis.call('ZSCORE', P .. 'held:' .. b, jid) then return 'held' end  -- held by its budget (gates.lua)
  if bst == 'paused' then
    redis.call('ZADD', P .. 'held:' .. b, ARGV[3], jid)
    return 'held'
  end
end
-- A root job that is not pinned is routed again when admitted (its upstream may have stopped since).
if not redis.call('HGET', jkey, 'upstream_pin') then redis.call('HDEL', jkey, 'upstream') end
redis.call('ZADD', wait_key(jkey, mode), ARGV[3], jid)
return 'parked'
