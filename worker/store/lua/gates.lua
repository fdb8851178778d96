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
-- Budgets (worker.pricing; micros). Committed = the price of every job holding a slot lease that is not yet
-- accepted (accepted jobs are in the spend already), so a failed submit needs no release and the check and the
-- lease are one script. Returns nil, 'budget' (the batch's budget; the job is held) or 'budget_daily' (global).
local function committed(batch)
  local sum = 0
  for _, m in ipairs({'fast', 'relax', 'turbo'}) do
    for _, other in ipairs(redis.call('ZRANGE', P .. 'slots:' .. m, 0, -1)) do
      local ok = P .. 'job:' .. other
      if redis.call('HEXISTS', ok, 'upstream_id') == 0 and
         (batch == nil or redis.call('HGET', ok, 'batch_id') == batch) then
        sum = sum + (tonumber(redis.call('HGET', ok, 'price_micros') or '0') or 0)
      end
    end
  end
  return sum
end
local function budget_gate(jid, day, daily_budget)
  local jkey = P .. 'job:' .. jid
  local b = redis.call('HGET', jkey, 'batch_id')
  local bbudget = nil
  if b and b ~= '' then bbudget = tonumber(redis.call('HGET', P .. 'batch:' .. b, 'budget_micros') or '') end
  if not bbudget and daily_budget <= 0 then return nil end
  local price = tonumber(redis.call('HGET', jkey, 'price_micros') or '')
  if not price then
    if bbudget then return 'budget', 'no price for ' .. (redis.call('HGET', jkey, 'price_key') or '?') end
    return 'budget_daily', 'no price for ' .. (redis.call('HGET', jkey, 'price_key') or '?')
  end
  if daily_budget > 0 then
    local spent = tonumber(redis.call('GET', P .. 'spent:default:' .. day) or '0')
    if spent + committed(nil) + price > daily_budget then
      redis.call('SADD', P .. 'budget_hits', '*daily')  -- told once per day by the budget alert
      return 'budget_daily', 'daily budget reached'
    end
  end
  if bbudget then
    local spent = tonumber(redis.call('HGET', P .. 'batch:' .. b, 'spent_micros') or '0')
    if spent + committed(b) + price > bbudget then return 'budget', 'budget reached' end
  end
  return nil
end
-- A job over its batch's budget waits in the batch's held set with the reason on the batch record.
local function hold_for_budget(jid, score, why)
  local b = redis.call('HGET', P .. 'job:' .. jid, 'batch_id')
  redis.call('ZADD', P .. 'held:' .. b, score, jid)
  redis.call('HSET', P .. 'batch:' .. b, 'hold_reason', 'budget', 'hold_detail', why)
  redis.call('SADD', P .. 'budget_hits', b)  -- told once per budget value by the budget alert
end
