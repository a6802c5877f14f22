"""Lua scripts: the store's atomic steps.

Each script is one atomic step on Redis, so a follower never sees a notification before its data
(or data without one), and a job ends exactly once, after its last token. Times come from Redis'
own clock (``TIME``) so that every process stamps tokens on one clock.

The job scripts name only the job's hash-tagged keys plus, where a job enters or leaves the
worker queue, the global queue or lease index: on Redis Cluster those two would need to move
into the job's slot (see ARCHITECTURE.md). What the scripts publish is defined in ``notices``.
"""

from __future__ import annotations

from .notices import LUA_END, LUA_TOKENS

# Shared prologue: the Redis clock as a decimal string with microseconds, and JSON-safe encoding
# of the end record. cjson writes numbers with 14 digits, too few for epoch microseconds, so
# times are spliced in as text.
_NOW = """
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: meta, chunks, times. ARGV: channel, owner, token... (The meta hash's count is set at the
# end; while running, LLEN of the chunks is the count, which saves a command per token.)
# Returns the new count, or -1 when the job is no longer running, -2 when another owner has it.
APPEND = (
    _NOW
    + """
local state = redis.call('HMGET', KEYS[1], 'status', 'owner')
if state[1] ~= 'running' then return -1 end
if state[2] ~= ARGV[2] then return -2 end
local tokens = {}
local times = {}
for i = 3, #ARGV do
  tokens[#tokens + 1] = ARGV[i]
  times[#times + 1] = now
end
local count = redis.call('RPUSH', KEYS[2], unpack(tokens))
redis.call('RPUSH', KEYS[3], unpack(times))
local offset = count - #tokens
redis.call('PUBLISH', ARGV[1], """
    + LUA_TOKENS
    + """)
return count
"""
)

# KEYS: meta, chunks, times, leases. ARGV: channel, job_id, status, error, usage_json, owner,
# retention_seconds, only_if_lease_lapsed ('1' or ''), only_if_status ('' or a status). An empty
# owner ends the job whoever runs it (cancel, reapers). Returns 1 when this call ended the job,
# 0 when it had ended already (or its lease still holds, or it is not in the status asked for),
# -2 for a foreign owner, -3 for an unknown job.
FINISH = (
    _NOW
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -3 end
if status == 'done' or status == 'failed' or status == 'cancelled' then return 0 end
if ARGV[9] ~= '' and status ~= ARGV[9] then return 0 end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[6] then return -2 end
if ARGV[8] == '1' then
  local deadline = redis.call('ZSCORE', KEYS[4], ARGV[2])
  if not deadline or tonumber(deadline) > now_ms then return 0 end
end
local count = redis.call('LLEN', KEYS[2])
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', now, 'count', count,
  'error', ARGV[4], 'usage', ARGV[5])
local ttl = tonumber(ARGV[7])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('ZREM', KEYS[4], ARGV[2])
local err = 'null'
if ARGV[4] ~= '' then err = cjson.encode(ARGV[4]) end
local usage = 'null'
if ARGV[5] ~= '' then usage = ARGV[5] end
local new_status = ARGV[3]
redis.call('PUBLISH', ARGV[1], """
    + LUA_END
    + """)
return 1
"""
)

# KEYS: meta, queue, leases. ARGV: job_id, entry_id, group, owner, lease_ms.
# Acknowledges the queue entry whatever happens; returns 1 when the caller now owns the job.
CLAIM = (
    _NOW
    + """
redis.call('XACK', KEYS[2], ARGV[3], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[4], 'started_at', now)
redis.call('HINCRBY', KEYS[1], 'claims', 1)
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[5]), ARGV[1])
return 1
"""
)

# KEYS: meta, leases. ARGV: job_id, owner, lease_ms. Returns 1 if the lease was extended, 0 if
# the job is no longer this owner's to run (it ended, was cancelled, or was reaped).
RENEW = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], 'XX', now_ms + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# KEYS: leases. ARGV: limit. Job ids whose lease deadline has passed.
EXPIRED_LEASES = (
    _NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
"""
)

# KEYS: active, starts (one tenant's). ARGV: job_id, max_active, per_minute (0: no limit).
# Admits the job under the tenant's quotas, atomically: returns {0, 0} when admitted, else
# {limit, retry_after_ms} with limit 1 = active jobs, 2 = jobs per minute.
ADMIT = (
    _NOW
    + """
local max_active, per_minute = tonumber(ARGV[2]), tonumber(ARGV[3])
if max_active > 0 and redis.call('ZCARD', KEYS[1]) >= max_active then return {1, 0} end
if per_minute > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - 60000)
  if redis.call('ZCARD', KEYS[2]) >= per_minute then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {2, tonumber(oldest[2]) + 60000 - now_ms}
  end
  redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], 60000)
end
if max_active > 0 then redis.call('ZADD', KEYS[1], now_ms, ARGV[1]) end
return {0, 0}
"""
)

# KEYS: workers. ARGV: worker name, forget_after_ms. A worker's heartbeat, on the Redis clock.
HEARTBEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[2]))
return 1
"""
)

# KEYS: workers. ARGV: window_ms. How many workers beat within the window.
WORKERS_ALIVE = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], now_ms - tonumber(ARGV[1]), '+inf')
"""
)
