-- Shared by the admission scripts: the global gates (breaker, pacing, daily cap) and taking a slot.
local function global_gate(now, interval, cap, day)
  if redis.call('HGET', P .. 'breaker', 'tripped') == '1' then return 'breaker' end
  if interval > 0 then
    local nxt = tonumber(redis.call('GET', P .. 'pace') or '0')
    if now < nxt then return 'pacing' end
  end
  if cap > 0 then
    local used = tonumber(redis.call('GET', P .. 'daily:' .. day) or '0')
    if used >= cap then return 'daily_cap' end
  end
  return nil
end
local function take(skey, jid, now, lease, interval, cap, day)
  redis.call('ZADD', skey, now + lease, jid)
  if interval > 0 then redis.call('SET', P .. 'pace', tostring(now + interval)) end
  if cap > 0 then
    redis.call('INCR', P .. 'daily:' .. day)
    redis.call('EXPIRE', P .. 'daily:' .. day, 172800)
  end
end
