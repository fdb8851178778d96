-- ARGV: mode, slots, now, lease_s, interval_s, daily_cap, day, max, daily_budget (micros)
-- A head job over its batch's budget is moved to the batch's held set and the next is looked at.
-- Pops the best parked jobs while slots and gates allow, leasing a slot to each and expecting its task to
-- start before the lease ends (``expected``); returns their ids.
local mode = ARGV[1]
local n, now, lease = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local interval, cap, day, max = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local daily_budget = tonumber(ARGV[9])
local skey = P .. 'slots:' .. mode
local wkey = P .. 'waiting:' .. mode
drop_expired(skey, now, lease)
local out = {}
while #out < max do
  if redis.call('ZCARD', skey) >= n then break end
  if global_gate(now, interval, cap, day) then break end
  local head = redis.call('ZPOPMIN', wkey)
  if not head[1] then break end
  local jid = head[1]
  local bwhy, bdetail = nil, nil
  if redis.call('HGET', P .. 'job:' .. jid, 'status') == 'queued' then bwhy, bdetail = budget_gate(jid, day, daily_budget) end
  if bwhy == 'budget' then
    hold_for_budget(jid, tonumber(head[2]), bdetail)
  elseif bwhy then
    redis.call('ZADD', wkey, head[2], jid)
    break
  elseif redis.call('HGET', P .. 'job:' .. jid, 'status') == 'queued' then
    take(skey, jid, now, lease, interval, cap, day)
    redis.call('HSET', P .. 'job:' .. jid, 'admit_token', '1')
    redis.call('ZADD', P .. 'expected', now + lease, jid)
    table.insert(out, jid)
    if interval > 0 then break end
  end
end
return out
