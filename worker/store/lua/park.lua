-- Park a queued job: store its task message and put it in its waiting set (its mode's, or its pinned upstream's) (or its paused batch's
-- held set). ARGV: job_id, message JSON, score[, room: JSON list of {name, limit}, the upstreams it may go to, now].
-- Returns 'parked' | 'held' | 'cancelled' | <status>; 'parked_room' when one of ``room`` has a slot lease free
-- now: a slot freed after this job's gates refused it, whose admission ran before it waited here, so the parker
-- admits (with no free slot, whoever frees one finds this job waiting: no admission round is needed). An expired
-- lease counts as free, though admission may renew it (its job still in flight): one admission round too many.
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
if ARGV[4] and ARGV[4] ~= '' then
  local now = tonumber(ARGV[5])
  for _, g in ipairs(cjson.decode(ARGV[4])) do
    if redis.call('ZCOUNT', slots_key(g.name, mode), now, '+inf') < g.limit then return 'parked_room' end
  end
  return 'parked'
end
return 'parked'
