-- Shared by the ledger scripts: state tables and the batch counter move (P is the key prefix).
local TERMINAL = {succeeded=true, failed=true, timed_out=true, cancelled=true, needs_review=true,
                  skipped=true}
local RANK = {queued=0, submitting=1, submitted=2, running=3}
-- End states a person looks at: each batch keeps its jobs in them in ``batch:<id>:failed`` (so ``mjq status``
-- lists failures without reading the whole batch).
local FAILED = {failed=true, timed_out=true, needs_review=true}
local function count_move(jkey, from, to, now)
  if from == to then return end
  local b = redis.call('HGET', jkey, 'batch_id')
  if b and b ~= '' then
    local bk = P .. 'batch:' .. b
    if from then redis.call('HINCRBY', bk, 'n:' .. from, -1) end
    redis.call('HINCRBY', bk, 'n:' .. to, 1)
    redis.call('HSET', bk, 'updated_at', now)
    local jid = redis.call('HGET', jkey, 'job_id')
    if FAILED[to] then
      redis.call('ZADD', bk .. ':failed', now, jid)
    elseif from and FAILED[from] then
      redis.call('ZREM', bk .. ':failed', jid)
    end
  end
end
