-- Pause / resume a batch, moving its parked jobs between waiting:<mode> and held:<batch>.
-- ARGV: batch_id, new status ('paused' | 'active'). Returns the number of jobs moved.
local b = ARGV[1]
local bk = P .. 'batch:' .. b
if redis.call('HSETNX', bk, 'batch_id', b) == 1 then
  redis.call('HSET', bk, 'created_at', ARGV[3])
  redis.call('ZADD', P .. 'batches', ARGV[3], b)
end
local cur = redis.call('HGET', bk, 'status')
if cur == 'cancelled' then return -1 end
redis.call('HSET', bk, 'status', ARGV[2])
local moved = 0
local held = P .. 'held:' .. b
if ARGV[2] == 'paused' then
  local ids = redis.call('ZRANGE', bk .. ':jobs', 0, -1)
  for _, jid in ipairs(ids) do
    local jkey = P .. 'job:' .. jid
    local mode = redis.call('HGET', jkey, 'mode') or 'fast'
    local wkey = wait_key(jkey, mode)
    local score = redis.call('ZSCORE', wkey, jid)
    if score then
      redis.call('ZREM', wkey, jid)
      redis.call('ZADD', held, score, jid)
      moved = moved + 1
    end
  end
else
  local items = redis.call('ZRANGE', held, 0, -1, 'WITHSCORES')
  for i = 1, #items, 2 do
    local jid = items[i]
    local jkey = P .. 'job:' .. jid
    local mode = redis.call('HGET', jkey, 'mode') or 'fast'
    redis.call('ZADD', wait_key(jkey, mode), items[i + 1], jid)
    moved = moved + 1
  end
  redis.call('DEL', held)
end
return moved
