-- Shared by the ledger and gate scripts: per-upstream key names, state tables and the batch counter move (P is
-- the key prefix). Per-upstream keys mirror ``worker.store.keys``: the upstream ``default`` keeps the names of the
-- one-upstream days (``slots:fast``, ``breaker``, ``pace``, ``daily:<day>``); another upstream's name is appended.
local function ukey(base, up)
  if not up or up == '' or up == 'default' then return P .. base end
  return P .. base .. ':' .. up
end
local function upstream_of(jkey) return redis.call('HGET', jkey, 'upstream') or 'default' end
local function slots_key(up, mode) return ukey('slots:' .. mode, up) end
local function breaker_key(up) return ukey('breaker', up) end
local function pinned_key(up, mode) return P .. 'waiting:' .. mode .. ':' .. up end
-- Where a parked job waits: its upstream's own set when it is pinned (a follow-up, ``upstream=``), else its mode's.
local function wait_key(jkey, mode)
  local pin = redis.call('HGET', jkey, 'upstream_pin')
  if pin and pin ~= '' then return pinned_key(pin, mode) end
  return P .. 'waiting:' .. mode
end
local TERMINAL = {succeeded=true, failed=true, timed_out=true, cancelled=true, needs_review=true,
                  skipped=true}
local RANK = {queued=0, submitting=1, submitted=2, running=3}
-- End states a person looks at: each batch keeps its jobs in them in ``batch:<id>:failed`` (so ``mjq status``
-- lists failures without reading the whole batch).
local FAILED = {failed=true, timed_out=true, needs_review=true}
local function count_move(jkey, from, to, now)
  if from == to then return end
  local b = redis.call('HGET', jkey, 'batch_id')
  if b and b ~= '' then
    local bk = P .. 'batch:' .. b
    if from then redis.call('HINCRBY', bk, 'n:' .. from, -1) end
    redis.call('HINCRBY', bk, 'n:' .. to, 1)
    redis.call('HSET', bk, 'updated_at', now)
    if TERMINAL[to] and not (from and TERMINAL[from]) then  -- the batch's own pace (rate, ETA)
      redis.call('HSETNX', bk, 'first_end_at', now)
      redis.call('HSET', bk, 'last_end_at', now)
      redis.call('HINCRBY', bk, 'ended_n', 1)
    end
    local jid = redis.call('HGET', jkey, 'job_id')
    if FAILED[to] then
      redis.call('ZADD', bk .. ':failed', now, jid)
    elseif from and FAILED[from] then
      redis.call('ZREM', bk .. ':failed', jid)
    end
  end
end
-- A job's transitions (``mjq logs JOB``): a capped list per job (``joblog:<id>``), newest last.
local LOG_KEEP = 50
local function log_move(jid, from, to, reason, now)
  local key = P .. 'joblog:' .. jid
  local entry = {at=tonumber(now), to=to}  -- an empty from / reason is left out (Ledger.job_log puts it back)
  if from and from ~= '' then entry['from'] = from end
  if reason and reason ~= '' then entry['reason'] = reason end
  redis.call('RPUSH', key, cjson.encode(entry))
  redis.call('LTRIM', key, -LOG_KEEP, -1)
end
-- The spend ledger (micros): an accepted job's price is spent once, on the batch and on its UTC day (keys of
-- the job's upstream); a job that fails after acceptance is refunded once, or counted apart when the
-- upstream charges failures (``charges_failures`` on the job record).
local FAILED = {failed=true, timed_out=true, cancelled=true}
local function record_spend(jkey, day)
  local price = tonumber(redis.call('HGET', jkey, 'price_micros') or '')
  if not price or redis.call('HSETNX', jkey, 'cost_micros', price) == 0 then return end
  redis.call('HSET', jkey, 'spent_day', day)
  local skey = P .. 'spent:' .. upstream_of(jkey) .. ':' .. day
  redis.call('INCRBY', skey, price)
  redis.call('EXPIRE', skey, 3024000)
  local b = redis.call('HGET', jkey, 'batch_id')
  if b and b ~= '' then redis.call('HINCRBY', P .. 'batch:' .. b, 'spent_micros', price) end
end
local function charge_failure(jkey)
  local cost = tonumber(redis.call('HGET', jkey, 'cost_micros') or '')
  if not cost or cost == 0 or redis.call('HSETNX', jkey, 'failure_settled', '1') == 0 then return end
  local b = redis.call('HGET', jkey, 'batch_id')
  local bk = nil
  if b and b ~= '' then bk = P .. 'batch:' .. b end
  if redis.call('HGET', jkey, 'charges_failures') == '1' then
    if bk then
      redis.call('HINCRBY', bk, 'charged_failed_n', 1)
      redis.call('HINCRBY', bk, 'charged_failed_micros', cost)
    end
    return
  end
  redis.call('HSET', jkey, 'cost_micros', 0, 'refunded_micros', cost)
  local day = redis.call('HGET', jkey, 'spent_day')
  if day then redis.call('DECRBY', P .. 'spent:' .. upstream_of(jkey) .. ':' .. day, cost) end
  if bk then redis.call('HINCRBY', bk, 'spent_micros', -cost) end
end
