-- ARGV: mode, job_id, now, lease_s, day, score, daily_budget (micros, the pool's), upstreams (the pool's names,
-- comma-separated), candidates (JSON list of gate tables, see gates.lua: the upstreams this job may go to, in
-- routing order: a pinned job's one, or every open upstream serving its mode).
-- Returns {1, 'admitted'|'held', '', upstream} or {0, reason[, retry_at]}; reasons: breaker (every candidate is
-- stopped), paused, cancelled, slots, queue, pacing, daily_cap, budget (held in its batch's held set),
-- budget_daily, hours (no candidate: outside every work window). A job refused by its batch loses any lease.
-- A job that already holds a lease submits again (a retry) only through its upstream's pacing gates, like any
-- submit; refused by pacing, it keeps its lease and gets the time the pace allows (retry_at). The first submit
-- of a job admitted by admit_next (``admit_token``) passes the other gates (admit_next took its turn) and only
-- waits if another job's submit claimed the pace since its admission. A lease on an upstream that stopped (or
-- left the candidates) is given up and the job is routed again: its work moves to the others.
local mode, jid = ARGV[1], ARGV[2]
local now, lease, day, score = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local daily_budget = tonumber(ARGV[7])
local ups = split(ARGV[8])
local cands = cjson.decode(ARGV[9])
local jkey = P .. 'job:' .. jid
local cur_up = upstream_of(jkey)
local held_key = slots_key(cur_up, mode)
local b = redis.call('HGET', jkey, 'batch_id')
if b and b ~= '' then
  local bst = redis.call('HGET', P .. 'batch:' .. b, 'status')
  if bst == 'paused' or bst == 'cancelled' then
    redis.call('ZREM', held_key, jid)
    return {0, bst}
  end
end
drop_expired(held_key, now, lease)
if redis.call('ZSCORE', held_key, jid) then
  local g = nil
  for _, c in ipairs(cands) do if c.name == cur_up then g = c end end
  if g and redis.call('HGET', breaker_key(cur_up), 'tripped') ~= '1' then
    if redis.call('HGET', jkey, 'admit_token') then
      redis.call('ZADD', held_key, 'XX', now + lease, jid)
      local later = paced_submit(cur_up, jid, now, g.interval)
      if later then return {0, 'pacing', tostring(later)} end
      redis.call('HDEL', jkey, 'admit_token')
      return {1, 'held', '', cur_up}
    end
    local held_why = up_gate(g, mode, now, day)
    if held_why == 'pacing' then
      redis.call('ZADD', held_key, 'XX', now + lease, jid)
      return {0, 'pacing', redis.call('GET', ukey('pace', cur_up))}
    end
    if not held_why then
      take(g, mode, jid, now, lease, day)
      return {1, 'held', '', cur_up}
    end
  end
  redis.call('ZREM', held_key, jid)
  redis.call('HDEL', jkey, 'admit_token')
end
if #cands == 0 then return {0, 'hours'} end
local first, budget_detail, others = nil, nil, false
for _, g in ipairs(cands) do
  local skey = slots_key(g.name, mode)
  drop_expired(skey, now, lease)
  local why, detail = nil, nil
  if redis.call('ZCARD', skey) >= g.limit then why = 'slots' end
  if not why then
    for _, wk in ipairs({P .. 'waiting:' .. mode, pinned_key(g.name, mode)}) do
      local head = redis.call('ZRANGE', wk, 0, 0, 'WITHSCORES')
      if head[1] and head[1] ~= jid and tonumber(head[2]) < score then why = 'queue' end
    end
  end
  if not why then why = up_gate(g, mode, now, day) end
  if not why then why, detail = budget_gate(jid, day, daily_budget, g, ups) end
  if not why then
    take(g, mode, jid, now, lease, day)
    redis.call('ZREM', P .. 'waiting:' .. mode, jid)
    redis.call('ZREM', wait_key(jkey, mode), jid)
    redis.call('HDEL', jkey, 'admit_token')
    return {1, 'admitted', '', g.name}
  end
  if why == 'budget' then budget_detail = detail elseif why ~= 'breaker' then others = true end
  if first == nil or (first == 'breaker' and why ~= 'breaker') then first = why end
end
if budget_detail and not others then
  redis.call('ZREM', P .. 'waiting:' .. mode, jid)
  redis.call('ZREM', wait_key(jkey, mode), jid)
  hold_for_budget(jid, score, budget_detail)
  return {0, 'budget'}
end
if first == 'budget' then first = 'slots' end
return {0, first}
