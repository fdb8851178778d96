-- ARGV: gate table JSON (one upstream, see gates.lua), mode, now, lease_s, day, max, daily_budget (micros, the
-- pool's), upstreams (the pool's names, comma-separated).
-- Pops the best parked jobs this upstream may start now, from its mode's waiting set and its own (pinned) one,
-- while its slots and gates allow, leasing a slot to each and expecting its task to start before the lease
-- ends (``expected``); returns their ids. A head job over its batch's budget is moved to the batch's held set
-- and the next is looked at.
local g = cjson.decode(ARGV[1])
local mode = ARGV[2]
local now, lease, day, max = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local daily_budget = tonumber(ARGV[7])
local ups = split(ARGV[8])
local skey = slots_key(g.name, mode)
local shared, own = P .. 'waiting:' .. mode, pinned_key(g.name, mode)
drop_expired(skey, now, lease)
local out = {}
while #out < max do
  if redis.call('ZCARD', skey) >= g.limit then break end
  if up_gate(g, mode, now, day) then break end
  local a = redis.call('ZRANGE', shared, 0, 0, 'WITHSCORES')
  local o = redis.call('ZRANGE', own, 0, 0, 'WITHSCORES')
  local wkey = nil
  if a[1] and (not o[1] or tonumber(a[2]) <= tonumber(o[2])) then wkey = shared elseif o[1] then wkey = own end
  if not wkey then break end
  local head = redis.call('ZPOPMIN', wkey)
  local jid = head[1]
  local jkey = P .. 'job:' .. jid
  local queued = redis.call('HGET', jkey, 'status') == 'queued'
  local bwhy, bdetail = nil, nil
  if queued then bwhy, bdetail = budget_gate(jid, day, daily_budget, g, ups) end
  if bwhy == 'budget' then
    hold_for_budget(jid, tonumber(head[2]), bdetail)
  elseif bwhy then
    redis.call('ZADD', wkey, head[2], jid)
    break
  elseif queued then
    take(g, mode, jid, now, lease, day)
    redis.call('HSET', jkey, 'admit_token', '1')
    redis.call('ZADD', P .. 'expected', now + lease, jid)
    table.insert(out, jid)
    if g.interval > 0 then break end
  end
end
return out
