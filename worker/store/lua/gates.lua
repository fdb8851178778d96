-- Shared by the admission scripts (after prelude.lua): the gates of one upstream (its breaker, pacing, daily
-- caps, daily budget), taking one of its slots, and the budgets. ``g`` is an upstream's gate table, from
-- ``worker.store.slots``: {name, limit (slots + queue-ahead of the mode), interval (this submit's gap, drawn in
-- [min, max]), cap (a day, all modes), cap_mode (a day, this mode), budget (its daily budget, micros),
-- prices {price key: micros} of the mode, charges (1: it keeps the price of a failed job)}.
local function daily_key(g, day) return ukey('daily:' .. day, g.name) end
local function daily_mode_key(g, day, mode) return P .. 'daily:' .. day .. ':' .. g.name .. ':' .. mode end
local function up_gate(g, mode, now, day)
  if redis.call('HGET', breaker_key(g.name), 'tripped') == '1' then return 'breaker' end
  if g.interval > 0 then
    local nxt = tonumber(redis.call('GET', ukey('pace', g.name)) or '0')
    if now < nxt then return 'pacing' end
  end
  if g.cap > 0 and tonumber(redis.call('GET', daily_key(g, day)) or '0') >= g.cap then return 'daily_cap' end
  if g.cap_mode > 0 and tonumber(redis.call('GET', daily_mode_key(g, day, mode)) or '0') >= g.cap_mode then
    return 'daily_cap'
  end
  return nil
end
-- The pace is claimed by a job (``pace_by``): a job admitted ahead of its POST (admit_next) submits later, and
-- then the gap is counted again from its real submit (see paced_submit).
local function claim_pace(up, jid, now, interval)
  if interval > 0 then
    redis.call('SET', ukey('pace', up), tostring(now + interval))
    redis.call('SET', ukey('pace_by', up), jid)
  end
end
-- The job's price on this upstream (micros), nil when unknown.
local function price_on(g, jkey)
  local pk = redis.call('HGET', jkey, 'price_key') or ''
  local price = g.prices[pk]
  if price == nil then return nil end
  return tonumber(price)
end
-- Take a slot of ``g``: the lease, the pace, the day's submit counts, the job's upstream and its price there,
-- and the batch's count per upstream (where each job went).
local function take(g, mode, jid, now, lease, day)
  local jkey = P .. 'job:' .. jid
  redis.call('ZADD', slots_key(g.name, mode), now + lease, jid)
  claim_pace(g.name, jid, now, g.interval)
  for _, k in ipairs({daily_key(g, day), daily_mode_key(g, day, mode)}) do
    redis.call('INCR', k)
    redis.call('EXPIRE', k, 172800)
  end
  local price = price_on(g, jkey)
  if price then redis.call('HSET', jkey, 'price_micros', price) else redis.call('HDEL', jkey, 'price_micros') end
  redis.call('HSET', jkey, 'upstream', g.name, 'charges_failures', tostring(g.charges))
  local before = redis.call('HGET', jkey, 'counted_up')
  if before ~= g.name then
    local b = redis.call('HGET', jkey, 'batch_id')
    if b and b ~= '' then
      local bk = P .. 'batch:' .. b
      if before then redis.call('HINCRBY', bk, 'up:' .. before, -1) end
      redis.call('HINCRBY', bk, 'up:' .. g.name, 1)
    end
    redis.call('HSET', jkey, 'counted_up', g.name)
  end
end
-- The POST of a job admitted earlier by admit_next: it may go now unless another job claimed the pace since
-- (then it waits until the pace allows: returns that time); going, it claims the pace from now.
local function paced_submit(up, jid, now, interval)
  if interval <= 0 then return nil end
  local nxt = tonumber(redis.call('GET', ukey('pace', up)) or '0')
  if now < nxt and redis.call('GET', ukey('pace_by', up)) ~= jid then return nxt end
  claim_pace(up, jid, now, interval)
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
-- lease are one script. ``ups``: every upstream of the pool; ``only``: count one upstream's leases.
local function committed(batch, ups, only)
  local sum = 0
  for _, up in ipairs(ups) do
    if only == nil or only == up then
      for _, m in ipairs({'fast', 'relax', 'turbo'}) do
        for _, other in ipairs(redis.call('ZRANGE', slots_key(up, m), 0, -1)) do
          local ok = P .. 'job:' .. other
          if redis.call('HEXISTS', ok, 'upstream_id') == 0 and
             (batch == nil or redis.call('HGET', ok, 'batch_id') == batch) then
            sum = sum + (tonumber(redis.call('HGET', ok, 'price_micros') or '0') or 0)
          end
        end
      end
    end
  end
  return sum
end
local function spent_on(up, day) return tonumber(redis.call('GET', P .. 'spent:' .. up .. ':' .. day) or '0') end
-- Returns nil, 'budget' (the batch's budget; the job is held) or 'budget_daily' (MJQ_BUDGET_DAILY over the
-- pool, or this upstream's budget_daily), with a detail.
local function budget_gate(jid, day, daily_budget, g, ups)
  local jkey = P .. 'job:' .. jid
  local b = redis.call('HGET', jkey, 'batch_id')
  local bbudget = nil
  if b and b ~= '' then bbudget = tonumber(redis.call('HGET', P .. 'batch:' .. b, 'budget_micros') or '') end
  if not bbudget and daily_budget <= 0 and g.budget <= 0 then return nil end
  local price = price_on(g, jkey)
  if not price then
    local what = 'no price for ' .. (redis.call('HGET', jkey, 'price_key') or '?')
    if g.name ~= 'default' then what = what .. ' on ' .. g.name end
    if bbudget then return 'budget', what end
    return 'budget_daily', what
  end
  if daily_budget > 0 then
    local spent = 0
    for _, up in ipairs(ups) do spent = spent + spent_on(up, day) end
    if spent + committed(nil, ups, nil) + price > daily_budget then
      redis.call('SADD', P .. 'budget_hits', '*daily')  -- told once per day by the budget alert
      return 'budget_daily', 'daily budget reached'
    end
  end
  if g.budget > 0 and spent_on(g.name, day) + committed(nil, ups, g.name) + price > g.budget then
    return 'budget_daily', 'daily budget of ' .. g.name .. ' reached'
  end
  if bbudget then
    local spent = tonumber(redis.call('HGET', P .. 'batch:' .. b, 'spent_micros') or '0')
    if spent + committed(b, ups, nil) + price > bbudget then return 'budget', 'budget reached' end
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
local function split(csv)
  local out = {}
  for name in string.gmatch(csv, '[^,]+') do table.insert(out, name) end
  return out
end
