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
-- The pace is claimed by a job (``pace_by``): a job admitted ahead of its POST (admit_next) submits later, and
-- then the gap is counted again from its real submit (see paced_submit).
local function claim_pace(jid, now, interval)
  if interval > 0 then
    redis.call('SET', P .. 'pace', tostring(now + interval))
    redis.call('SET', P .. 'pace_by', jid)
  end
end
local function take(skey, jid, now, lease, interval, cap, day)
  redis.call('ZADD', skey, now + lease, jid)
  claim_pace(jid, now, interval)
  if cap > 0 then
    redis.call('INCR', P .. 'daily:' .. day)
    redis.call('EXPIRE', P .. 'daily:' .. day, 172800)
  end
end
-- The POST of a job admitted earlier by admit_next: it may go now unless another job claimed the pace since
-- (then it waits until the pace allows: returns that time); going, it claims the pace from now.
local function paced_submit(jid, now, interval)
  if interval <= 0 then return nil end
  local nxt = tonumber(redis.call('GET', P .. 'pace') or '0')
  if now < nxt and redis.call('GET', P .. 'pace_by') ~= jid then return nxt end
  claim_pace(jid, now, interval)
  return nil
end
-- Expired leases free their slots, except those of jobs still tracked upstream (in ``inflight``): a job that
-- runs there occupies the account whatever our clock says (a late poll on a busy machine must not let another
-- job in); its lease is renewed instead, and its end releases it. A crashed worker's submit (not tracked) expires.
local function drop_expired(skey, now, lease)
  local expired = redis.call('ZRANGEBYSCORE', skey, '-inf', now)
  for _, holder in ipairs(expired) do
    if redis.call('ZSCORE', P .. 'inflight', holder) then
      redis.call('ZADD', skey, now + lease, holder)
    else
      redis.call('ZREM', skey, holder)
    end
  end
end
