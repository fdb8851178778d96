-- The one transition script. ARGV: job_id, spec JSON. Spec keys:
--   to (state), now, from (list of allowed current states), forward (settle rules: no regressions, terminal
--   is final), reconcile (needs_review may move on), progress (number), gate (refuse when the breaker is
--   tripped or the batch paused/cancelled), require_no_upstream, fields {k: v}, delete [k], incr {k: n},
--   upstream (id to record and index), inflight (absolute next-check score), lease_until (slot lease kept
--   until), release (free the slot), day (UTC day of the spend recorded with the first upstream id),
--   reason (why, for the job's log; default its fail_reason or who settled it).
-- Returns {1, previous_state, batch, upstream name, reason} when applied, {0, current_state, why} when refused.
local jid = ARGV[1]
local s = cjson.decode(ARGV[2])
local jkey = P .. 'job:' .. jid
local cur = redis.call('HGET', jkey, 'status')
if not cur then return {0, '', 'unknown'} end
local to = s['to']
local now = s['now']
if s['from'] then
  local ok = false
  for _, st in ipairs(s['from']) do if st == cur then ok = true end end
  if not ok then return {0, cur, 'state'} end
end
if s['forward'] then
  if TERMINAL[cur] and not (cur == 'needs_review' and s['reconcile']) then return {0, cur, 'final'} end
  if not TERMINAL[to] and cur ~= 'needs_review' then
    if RANK[to] < RANK[cur] then return {0, cur, 'regression'} end
    if to == cur then
      local p = tonumber(redis.call('HGET', jkey, 'progress_pct') or '0') or 0
      if (tonumber(s['progress']) or 0) <= p then return {0, cur, 'stale'} end
    end
  end
end
if s['require_no_upstream'] and redis.call('HEXISTS', jkey, 'upstream_id') == 1 then
  return {0, cur, 'upstream'}
end
if s['gate'] then
  local br = redis.call('HGET', breaker_key(upstream_of(jkey)), 'tripped')
  if br == '1' then return {0, cur, 'breaker'} end
  local b = redis.call('HGET', jkey, 'batch_id')
  if b and b ~= '' then
    local bst = redis.call('HGET', P .. 'batch:' .. b, 'status')
    if bst == 'paused' or bst == 'cancelled' then return {0, cur, bst} end
  end
end
if s['fields'] then for k, v in pairs(s['fields']) do redis.call('HSET', jkey, k, v) end end
if s['delete'] then for _, k in ipairs(s['delete']) do redis.call('HDEL', jkey, k) end end
if s['incr'] then for k, v in pairs(s['incr']) do redis.call('HINCRBY', jkey, k, v) end end
if s['progress'] then redis.call('HSET', jkey, 'progress_pct', s['progress']) end
redis.call('HSET', jkey, 'status', to, 'updated_at', now)
count_move(jkey, cur, to, now)
local reason = s['reason'] or (s['fields'] and (s['fields']['fail_reason'] or s['fields']['settled_by'])) or ''
if cur ~= to then log_move(jid, cur, to, reason, now) end
local mode = redis.call('HGET', jkey, 'mode') or 'fast'
if s['upstream'] then
  if redis.call('HEXISTS', jkey, 'upstream_id') == 0 then record_spend(jkey, s['day']) end
  redis.call('HSET', jkey, 'upstream_id', s['upstream'])
  redis.call('HSETNX', P .. 'upstream', s['upstream'], jid)
end
if FAILED[to] and not FAILED[cur] then charge_failure(jkey) end
if TERMINAL[to] then
  redis.call('ZREM', P .. 'inflight', jid)
  redis.call('ZREM', P .. 'waiting:' .. mode, jid)
  redis.call('ZREM', wait_key(jkey, mode), jid)
  local b = redis.call('HGET', jkey, 'batch_id')
  if b and b ~= '' then redis.call('ZREM', P .. 'held:' .. b, jid) end
  redis.call('ZADD', P .. 'finishing', now, jid)
  redis.call('ZREM', P .. 'expected', jid)  -- an ended job waits for no message (the finishing set watches it)
  redis.call('HSET', jkey, 'finished_at', now)
elseif s['inflight'] then
  redis.call('ZADD', P .. 'inflight', s['inflight'], jid)
end
local up = upstream_of(jkey)
local skey = slots_key(up, mode)
if s['release'] then redis.call('ZREM', skey, jid) end
if s['lease_until'] then redis.call('ZADD', skey, 'XX', s['lease_until'], jid) end
return {1, cur, redis.call('HGET', jkey, 'batch_id') or '', up, reason}
