-- Rate limits of one call against up to two scopes (its allocation, then its model), in one round
-- trip. Sliding windows: requests and tokens are logged with Redis' own clock (every gateway process
-- shares it), so "N per window" holds exactly across processes. See quota/ratelimit.py.
--
-- KEYS, 4 per scope: requests log (zset id -> ms), tokens log (zset id -> ms), token amounts
--   (hash id -> tokens, plus "_sum"), calls in flight (zset id -> deadline ms).
-- ARGV: mode (admit | settle | renew), ticket id, window ms, lease ms, tokens, count the request
--   (0/1), hold a slot (0/1), then per scope: rpm, tpm, max_parallel ("" = no limit).
-- admit returns "allowed wait_ms rpm remaining reset_ms tpm remaining reset_ms" (-1 = no limit).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode, id = ARGV[1], ARGV[2]
local window, lease, tokens = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local count, hold = ARGV[6] == '1', ARGV[7] == '1'
local scopes = math.floor(#KEYS / 4)

local function limit(i, k)
  local v = ARGV[7 + (i - 1) * 3 + k]
  if v == '' then return nil end
  return tonumber(v)
end

local function token_sum(tk, th)
  -- entries that left the window give their tokens back, in batches (unpack has a stack limit)
  while true do
    local old = redis.call('ZRANGEBYSCORE', tk, '-inf', now - window, 'LIMIT', 0, 500)
    if #old == 0 then break end
    local amounts = redis.call('HMGET', th, unpack(old))
    local gone = 0
    for j = 1, #amounts do gone = gone + (tonumber(amounts[j]) or 0) end
    redis.call('HINCRBY', th, '_sum', -gone)
    redis.call('HDEL', th, unpack(old))
    redis.call('ZREM', tk, unpack(old))
  end
  return tonumber(redis.call('HGET', th, '_sum') or '0')
end

local function add_tokens(tk, th, amount)
  redis.call('ZADD', tk, now, id)
  redis.call('HSET', th, id, amount)
  redis.call('HINCRBY', th, '_sum', amount)
  redis.call('PEXPIRE', tk, window)
  redis.call('PEXPIRE', th, window)
end

local function hold_until(pk, deadline)
  redis.call('ZADD', pk, deadline, id)
  local last = redis.call('ZRANGE', pk, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', pk, tonumber(last[2]))
end

local function token_wait(tk, th, sum, tpm)
  -- until enough of the oldest entries have left for this call's tokens to fit
  local entries = redis.call('ZRANGE', tk, 0, 999, 'WITHSCORES')
  local freed = 0
  for j = 1, #entries, 2 do
    freed = freed + (tonumber(redis.call('HGET', th, entries[j])) or 0)
    local left = sum - freed
    if left < tpm and (left <= 0 or left + tokens <= tpm) then
      return tonumber(entries[j + 1]) + window - now
    end
  end
  return window
end

if mode == 'settle' then
  for i = 1, scopes do
    local tk, th, pk = KEYS[i * 4 - 2], KEYS[i * 4 - 1], KEYS[i * 4]
    if limit(i, 2) then
      local held = redis.call('HGET', th, id)
      if held and redis.call('ZSCORE', tk, id) then
        redis.call('HSET', th, id, tokens)
        redis.call('HINCRBY', th, '_sum', tokens - tonumber(held))
      elseif tokens > 0 then
        add_tokens(tk, th, tokens)
      end
    end
    if limit(i, 3) then redis.call('ZREM', KEYS[i * 4], id) end
  end
  return 'ok'
end

if mode == 'renew' then
  for i = 1, scopes do
    local pk = KEYS[i * 4]
    if limit(i, 3) and redis.call('ZSCORE', pk, id) then hold_until(pk, now + lease) end
  end
  return 'ok'
end

-- admit: read every scope, decide, and write only when every limit lets the call through
local wait = 0
local state = {}
for i = 1, scopes do
  local rk, tk, th, pk = KEYS[i * 4 - 3], KEYS[i * 4 - 2], KEYS[i * 4 - 1], KEYS[i * 4]
  local rpm, tpm, par = limit(i, 1), limit(i, 2), limit(i, 3)
  local s = {}
  if rpm then
    redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - window)
    s.requests = redis.call('ZCARD', rk)
    if count and s.requests >= rpm then
      local freeing = redis.call('ZRANGE', rk, s.requests - rpm, s.requests - rpm, 'WITHSCORES')
      wait = math.max(wait, tonumber(freeing[2]) + window - now)
    end
  end
  if tpm then
    s.tokens = token_sum(tk, th)
    if s.tokens >= tpm or (s.tokens > 0 and s.tokens + tokens > tpm) then
      wait = math.max(wait, token_wait(tk, th, s.tokens, tpm))
    end
  end
  if par then
    redis.call('ZREMRANGEBYSCORE', pk, '-inf', now)
    if hold and redis.call('ZCARD', pk) >= par then wait = math.max(wait, 1000) end
  end
  state[i] = s
end

local allowed = wait == 0
local out = {-1, -1, 0, -1, -1, 0}
for i = 1, scopes do
  local rk, tk, th, pk = KEYS[i * 4 - 3], KEYS[i * 4 - 2], KEYS[i * 4 - 1], KEYS[i * 4]
  local rpm, tpm, par = limit(i, 1), limit(i, 2), limit(i, 3)
  local s = state[i]
  if allowed then
    if rpm and count then
      redis.call('ZADD', rk, now, id)
      redis.call('PEXPIRE', rk, window)
      s.requests = s.requests + 1
    end
    if tpm and tokens > 0 then
      add_tokens(tk, th, tokens)
      s.tokens = s.tokens + tokens
    end
    if par and hold then hold_until(pk, now + lease) end
  end
  -- the headers show the scope with the least left, and how long until its window is empty
  if rpm and (out[1] < 0 or rpm - s.requests < out[2]) then
    local newest = redis.call('ZRANGE', rk, -1, -1, 'WITHSCORES')
    out[1], out[2] = rpm, math.max(0, rpm - s.requests)
    out[3] = newest[2] and (tonumber(newest[2]) + window - now) or 0
  end
  if tpm and (out[4] < 0 or tpm - s.tokens < out[5]) then
    local newest = redis.call('ZRANGE', tk, -1, -1, 'WITHSCORES')
    out[4], out[5] = tpm, math.max(0, tpm - s.tokens)
    out[6] = newest[2] and (tonumber(newest[2]) + window - now) or 0
  end
end
return table.concat({allowed and 1 or 0, wait, unpack(out)}, ' ')
