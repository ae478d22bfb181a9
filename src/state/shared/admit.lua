-- Checks and charges one request against every shared counter of its
-- budget, atomically (Redis runs a script alone).
--
-- KEYS: the counters (a hash each: `r:<second>` / `t:<second>` requests
-- and tokens in that wall-clock second, for the sliding minute;
-- `R:<bucket>` / `T:<bucket>` in that five-minute bucket, for the day).
-- ARGV: now (wall-clock seconds), the request's tokens, the calendar
-- period's start and end (seconds, -1 for a rolling day), then per key
-- its rpm, rpd, tpm, tpd (-1 where no limit applies).
-- Answers {0} when the request was charged, else {counter, limit, frees}
-- with limit 1 rpm, 2 rpd, 3 tpm, 4 tpd and frees in wall-clock seconds;
-- nothing is charged then.
local now = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local period_start = tonumber(ARGV[3])
local period_end = tonumber(ARGV[4])
local BUCKET = 300
local BUCKETS = 288
local current = math.floor(now / BUCKET)
local first = current - BUCKETS + 1
local counted = first
if period_start >= 0 then
  counted = math.max(first, math.floor(period_start / BUCKET))
end

for i, key in ipairs(KEYS) do
  local at = 4 + (i - 1) * 4
  local rpm = tonumber(ARGV[at + 1])
  local rpd = tonumber(ARGV[at + 2])
  local tpm = tonumber(ARGV[at + 3])
  local tpd = tonumber(ARGV[at + 4])
  local fields = redis.call('HGETALL', key)
  local minute_requests, minute_tokens, day_requests, day_tokens = 0, 0, 0, 0
  local oldest_second, oldest_bucket = nil, nil
  local stale = {}
  for j = 1, #fields, 2 do
    local kind = string.sub(fields[j], 1, 1)
    local n = tonumber(string.sub(fields[j], 3))
    local v = tonumber(fields[j + 1])
    if kind == 'r' or kind == 't' then
      if n <= now - 60 then
        stale[#stale + 1] = fields[j]
      elseif kind == 'r' then
        minute_requests = minute_requests + v
        if v > 0 and (oldest_second == nil or n < oldest_second) then oldest_second = n end
      else
        minute_tokens = minute_tokens + v
      end
    elseif n < first then
      stale[#stale + 1] = fields[j]
    elseif n >= counted then
      if kind == 'R' then day_requests = day_requests + v else day_tokens = day_tokens + v end
      if v > 0 and (oldest_bucket == nil or n < oldest_bucket) then oldest_bucket = n end
    end
  end
  -- Fields that left every window go, a thousand at a time (unpack's limit).
  for s = 1, #stale, 1000 do
    redis.call('HDEL', key, unpack(stale, s, math.min(s + 999, #stale)))
  end
  -- Corrections of a lost count can make a sum negative: never below 0.
  minute_requests = math.max(minute_requests, 0)
  minute_tokens = math.max(minute_tokens, 0)
  day_requests = math.max(day_requests, 0)
  day_tokens = math.max(day_tokens, 0)
  local minute_frees = (oldest_second or now) + 60
  local day_frees = ((oldest_bucket or current) + BUCKETS) * BUCKET
  if period_end >= 0 then day_frees = period_end end
  -- The same rules, in the same order, as the local counters (usage.rs).
  if rpm >= 0 and minute_requests >= rpm then return {i, 1, minute_frees} end
  if tpm >= 0 and minute_tokens > 0 and minute_tokens + tokens > tpm then return {i, 3, minute_frees} end
  if rpd >= 0 and day_requests >= rpd then return {i, 2, day_frees} end
  if tpd >= 0 and day_tokens > 0 and day_tokens + tokens > tpd then return {i, 4, day_frees} end
end

for _, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 'r:' .. ARGV[1], 1)
  redis.call('HINCRBY', key, 'R:' .. current, 1)
  if tokens > 0 then
    redis.call('HINCRBY', key, 't:' .. ARGV[1], ARGV[2])
    redis.call('HINCRBY', key, 'T:' .. current, ARGV[2])
  end
  -- A day and an hour: whatever any window still counts.
  redis.call('EXPIRE', key, 90000)
end
return {0}
