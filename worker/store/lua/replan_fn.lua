-- A parent whose children were counted skipped (see mark_skipped) will have them after all: plan them again.
local function replan(jkey)
  local skipped = tonumber(redis.call('HGET', jkey, 'skipped_n') or '0') or 0
  local b = redis.call('HGET', jkey, 'batch_id')
  if skipped > 0 and b and b ~= '' then
    local bk = P .. 'batch:' .. b
    redis.call('HINCRBY', bk, 'total', -skipped)
    redis.call('HINCRBY', bk, 'n:skipped', -skipped)
    redis.call('HINCRBY', bk, 'planned', tonumber(redis.call('HGET', jkey, 'skipped_planned') or '0') or 0)
  end
  redis.call('HDEL', jkey, 'skipped_n', 'skipped_planned')
end
