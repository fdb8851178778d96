-- Set a batch's budget and release the jobs it held (they go back to waiting and are checked again when
-- admitted). ARGV: batch_id, budget (micros), now. Returns the number of jobs released (0 for a paused batch).
local b = ARGV[1]
local bk = P .. 'batch:' .. b
if redis.call('HSETNX', bk, 'batch_id', b) == 1 then
  redis.call('HSET', bk, 'status', 'active', 'created_at', ARGV[3])
  redis.call('ZADD', P .. 'batches', ARGV[3], b)
end
if redis.call('HGET', bk, 'budget_micros') == ARGV[2] then return 0 end
redis.call('HSET', bk, 'budget_micros', ARGV[2])
if redis.call('HGET', bk, 'hold_reason') ~= 'budget' then return 0 end
redis.call('HDEL', bk, 'hold_reason', 'hold_detail')
if redis.call('HGET', bk, 'status') ~= 'active' then return 0 end
local items = redis.call('ZRANGE', P .. 'held:' .. b, 0, -1, 'WITHSCORES')
for i = 1, #items, 2 do
  local jkey = P .. 'job:' .. items[i]
  local mode = redis.call('HGET', jkey, 'mode') or 'fast'
  redis.call('ZADD', wait_key(jkey, mode), items[i + 1], items[i])
end
redis.call('DEL', P .. 'held:' .. b)
return #items / 2
