-- Create a job (idempotent on its id). ARGV: job_id, fields JSON, now.
local jid = ARGV[1]
local f = cjson.decode(ARGV[2])
local now = ARGV[3]
local jkey = P .. 'job:' .. jid
local b = f['batch_id']
-- the producer announced it to its batch before sending (``batch:<id>:expect``): created, or known already
-- (then it never becomes this batch's job), it is no longer pending there
if b and b ~= '' then redis.call('SREM', P .. 'batch:' .. b .. ':expect', jid) end
local cur = redis.call('HGET', jkey, 'status')
if cur then return {0, cur} end
for k, v in pairs(f) do redis.call('HSET', jkey, k, v) end
redis.call('HSET', jkey, 'job_id', jid, 'status', 'queued', 'created_at', now, 'updated_at', now)
if b and b ~= '' then
  local bk = P .. 'batch:' .. b
  if redis.call('HSETNX', bk, 'batch_id', b) == 1 then
    redis.call('HSET', bk, 'status', 'active', 'created_at', now)
    redis.call('ZADD', P .. 'batches', now, b)
  end
  redis.call('HINCRBY', bk, 'total', 1)
  if f['parent_job'] and f['parent_job'] ~= '' then
    local planned = tonumber(redis.call('HGET', bk, 'planned') or '0')
    if planned > 0 then redis.call('HINCRBY', bk, 'planned', -1) end
  end
  redis.call('ZADD', bk .. ':jobs', now, jid)
  count_move(jkey, nil, 'queued', now)
end
log_move(jid, nil, 'queued', f['parent_job'] and ('follow-up of ' .. f['parent_job']) or 'created', now)
if f['parent_job'] and f['parent_job'] ~= '' then
  redis.call('ZADD', P .. 'children:' .. f['parent_job'], now, jid)
end
return {1, 'queued', b or '', redis.call('HGET', jkey, 'upstream') or 'default'}
