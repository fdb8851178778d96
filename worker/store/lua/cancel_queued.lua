-- Cancel many jobs at once (``mjq cancel`` of a batch): each one still ``queued`` ends ``cancelled`` as
-- transition.lua ends a job (counters, failure index, waiting/held/slot sets, finishing, its log).
-- ARGV: now, reason, job ids... Returns id, upstream name, id, upstream name... of the jobs cancelled.
local now = tonumber(ARGV[1])
local reason = ARGV[2]
local done = {}
for i = 3, #ARGV do
  local jid = ARGV[i]
  local jkey = P .. 'job:' .. jid
  if redis.call('HGET', jkey, 'status') == 'queued' then
    redis.call('HSET', jkey, 'status', 'cancelled', 'fail_reason', reason, 'updated_at', now, 'finished_at', now)
    count_move(jkey, 'queued', 'cancelled', now)
    log_move(jid, 'queued', 'cancelled', reason, now)
    local mode = redis.call('HGET', jkey, 'mode') or 'fast'
    redis.call('ZREM', P .. 'inflight', jid)
    redis.call('ZREM', P .. 'waiting:' .. mode, jid)
    redis.call('ZREM', wait_key(jkey, mode), jid)  -- a pinned job waits in its upstream's own set
    redis.call('ZREM', slots_key(upstream_of(jkey), mode), jid)  -- a lease it held on its upstream (any one)
    local b = redis.call('HGET', jkey, 'batch_id')
    if b and b ~= '' then redis.call('ZREM', P .. 'held:' .. b, jid) end
    redis.call('ZADD', P .. 'finishing', now, jid)
    done[#done + 1] = jid
    done[#done + 1] = redis.call('HGET', jkey, 'upstream') or 'default'
  end
end
return done
