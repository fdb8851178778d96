-- ARGV: mode, job_id, slots, now, lease_s, interval_s, daily_cap, day, score, daily_budget (micros)
-- Returns {1, 'admitted'|'held'} or {0, reason[, retry_at]}; reasons: breaker, paused, cancelled, slots, queue,
-- pacing, daily_cap, budget (held in its batch's held set), budget_daily. A job refused by the breaker, its batch or the daily cap loses any lease it held.
-- A job that already holds a lease submits again (a retry) only through the pacing gates, like any submit;
-- refused by pacing, it keeps its lease and gets the time the pace allows (retry_at). The first submit of a
-- job admitted by admit_next (``admit_token``) passes the other gates (admit_next took its turn) and only
-- waits if another job's submit claimed the pace since its admission.
local mode, jid = ARGV[1], ARGV[2]
local n, now, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local interval, cap, day, score = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local daily_budget = tonumber(ARGV[10])
local skey = P .. 'slots:' .. mode
local b = redis.call('HGET', P .. 'job:' .. jid, 'batch_id')
if b and b ~= '' then
  local bst = redis.call('HGET', P .. 'batch:' .. b, 'status')
  if bst == 'paused' or bst == 'cancelled' then
    redis.call('ZREM', skey, jid)
    return {0, bst}
  end
end
if redis.call('HGET', P .. 'breaker', 'tripped') == '1' then
  redis.call('ZREM', skey, jid)
  return {0, 'breaker'}
end
drop_expired(skey, now, lease)
if redis.call('ZSCORE', skey, jid) then
  local jkey = P .. 'job:' .. jid
  if redis.call('HGET', jkey, 'admit_token') then
    redis.call('ZADD', skey, 'XX', now + lease, jid)
    local later = paced_submit(jid, now, interval)
    if later then return {0, 'pacing', tostring(later)} end
    redis.call('HDEL', jkey, 'admit_token')
    return {1, 'held'}
  end
  local held_why = global_gate(now, interval, cap, day)
  if held_why == 'pacing' then
    redis.call('ZADD', skey, 'XX', now + lease, jid)
    return {0, 'pacing', redis.call('GET', P .. 'pace')}
  end
  if held_why then
    redis.call('ZREM', skey, jid)
    return {0, held_why}
  end
  take(skey, jid, now, lease, interval, cap, day)
  return {1, 'held'}
end
if redis.call('ZCARD', skey) >= n then return {0, 'slots'} end
local head = redis.call('ZRANGE', P .. 'waiting:' .. mode, 0, 0, 'WITHSCORES')
if head[1] and head[1] ~= jid and tonumber(head[2]) < score then return {0, 'queue'} end
local why = global_gate(now, interval, cap, day)
if why then return {0, why} end
local bwhy, bdetail = budget_gate(jid, day, daily_budget)
if bwhy == 'budget' then
  redis.call('ZREM', P .. 'waiting:' .. mode, jid)
  hold_for_budget(jid, score, bdetail)
  return {0, 'budget'}
end
if bwhy then return {0, bwhy} end
take(skey, jid, now, lease, interval, cap, day)
redis.call('ZREM', P .. 'waiting:' .. mode, jid)
redis.call('HDEL', P .. 'job:' .. jid, 'admit_token')
return {1, 'admitted'}
