-- Reset jobs for a requeue. ARGV: now, reset-fields JSON list, reason, job ids...
local now = ARGV[1]
local drop = cjson.decode(ARGV[2])
local reason = ARGV[3]
local n = 0
for i = 4, #ARGV do
  local jid = ARGV[i]
  local jkey = P .. 'job:' .. jid
  local cur = redis.call('HGET', jkey, 'status')
  if cur and TERMINAL[cur] then
    local up = redis.call('HGET', jkey, 'upstream_id')
    if up then redis.call('HDEL', P .. 'upstream', up) end
    replan(jkey)  -- its never-run children are planned again: they exist once it succeeds
    for _, k in ipairs(drop) do redis.call('HDEL', jkey, k) end
    redis.call('HSET', jkey, 'status', 'queued', 'updated_at', now)
    redis.call('ZREM', P .. 'finishing', jid)
    count_move(jkey, cur, 'queued', now)
    log_move(jid, cur, 'queued', reason, now)
    n = n + 1
  end
end
return n
