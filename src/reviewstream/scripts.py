"""Lua scripts: the store's atomic steps.

Each script is one atomic step on Redis, so a follower never sees a notification before its data
(or data without one), and a job ends exactly once, after its last token. Times come from Redis'
own clock (``TIME``) so that every process stamps tokens on one clock.

The job scripts name only the job's hash-tagged keys plus, where a job enters or leaves the
worker queue, the global queue or lease index: on Redis Cluster those two would need to move
into the job's slot (see ARCHITECTURE.md). Each attempt of a job writes under its own owner
token (``worker#attempt``, set by CLAIM), so a lost producer that comes back can write nothing.
What the scripts publish is defined in ``notices``.
"""

from __future__ import annotations

from .notices import LUA_END, LUA_STATUS, LUA_TOKENS

# Shared prologue: the Redis clock as a decimal string with microseconds, and JSON-safe encoding
# of the end record. cjson writes numbers with 14 digits, too few for epoch microseconds, so
# times are spliced in as text.
_NOW = """
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: meta, chunks, times. ARGV: channel, owner, offset, token... (The meta hash's count is
# set at the end; while running, LLEN of the chunks is the count, which saves a command per
# token.) ``offset`` is where the producer believes the tokens go ('' to skip the check): a retry
# of an append whose reply was lost finds them stored already and stores nothing twice.
# Returns the new count, or -1 when the job is no longer running, -2 when another owner has it,
# -3 when the job holds neither ``offset`` tokens nor ``offset`` plus these.
APPEND = (
    _NOW
    + """
local state = redis.call('HMGET', KEYS[1], 'status', 'owner')
if state[1] ~= 'running' then return -1 end
if state[2] ~= ARGV[2] then return -2 end
local n = #ARGV - 3
if ARGV[3] ~= '' then
  local have, expected = redis.call('LLEN', KEYS[2]), tonumber(ARGV[3])
  if have == expected + n then return have end
  if have ~= expected then return -3 end
end
local tokens = {}
local times = {}
for i = 4, #ARGV do
  tokens[#tokens + 1] = ARGV[i]
  times[#times + 1] = now
end
local count = redis.call('RPUSH', KEYS[2], unpack(tokens))
redis.call('RPUSH', KEYS[3], unpack(times))
local offset = count - n
redis.call('PUBLISH', ARGV[1], """
    + LUA_TOKENS
    + """)
return count
"""
)

# Ends the job: needs KEYS[1..3] = meta, chunks, times, and the locals ``channel``,
# ``new_status``, ``err_text``, ``usage_json``, ``sha`` (each '' when absent), ``ttl``, ``now``.
_END = (
    """
local count = redis.call('LLEN', KEYS[2])
redis.call('HSET', KEYS[1], 'status', new_status, 'finished_at', now, 'count', count,
  'error', err_text, 'usage', usage_json, 'sha256', sha)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
local err = 'null'
if err_text ~= '' then err = cjson.encode(err_text) end
local usage = 'null'
if usage_json ~= '' then usage = usage_json end
if sha ~= '' then sha = '"' .. sha .. '"' else sha = 'null' end
redis.call('PUBLISH', channel, """
    + LUA_END
    + """)
"""
)

# KEYS: meta, chunks, times, leases. ARGV: channel, job_id, status, error, usage_json, owner,
# retention_seconds, only_if_lease_lapsed ('1' or ''), only_if_status ('' or a status),
# expected_count, sha256. An empty owner ends the job whoever runs it (cancel, reapers); the
# digest is of the first ``expected_count`` tokens, so the call is refused if more were stored.
# Returns 1 when this call ended the job, 0 when it had ended already (or its lease still holds,
# or it is not in the status asked for), -2 for a foreign owner, -3 for an unknown job, -4 when
# the job holds another number of tokens than ``expected_count`` (read again and retry).
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
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[10]) then return -4 end
redis.call('ZREM', KEYS[4], ARGV[2])
local channel, new_status, err_text, usage_json = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
local sha, ttl = ARGV[11], tonumber(ARGV[7])
"""
    + _END
    + """
return 1
"""
)

# KEYS: meta, queue, leases, chunks. ARGV: job_id, entry_id, group, worker, lease_ms, channel,
# reset ('1': the new attempt starts over from the prompt). Acknowledges the queue entry
# whatever happens. When the job is still queued, it becomes running under ``worker#attempt``
# (the owner token that fences every later write of this attempt) with a lease; a later attempt
# announces itself. Returns {attempt, stored token count}, or {0, 0} when the job was not queued.
CLAIM = (
    _NOW
    + """
redis.call('XACK', KEYS[2], ARGV[3], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return {0, 0} end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[4] .. '#' .. attempt,
  'started_at', now, 'seen_ms', now_ms)
redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[5]), ARGV[1])
local count = redis.call('LLEN', KEYS[4])
if attempt > 1 then
  local extra = ''
  if ARGV[7] == '1' and count > 0 then extra = ',"reset":true' end
  local new_status = 'running'
  redis.call('PUBLISH', ARGV[6], """
    + LUA_STATUS
    + """)
end
return {attempt, count}
"""
)

# KEYS: meta, chunks, queue, leases. ARGV: channel, job_id, cause, max_attempts, owner,
# only_if_lease_lapsed ('1' or ''). A running job whose producer is lost (its lease lapsed, or
# its owner lets it go) goes back to the queue, its cause recorded, unless its attempts are
# spent. An empty owner acts whoever runs the job. Returns {1, ''} when requeued, {2, causes}
# (a JSON list naming every attempt's cause) when the attempts are spent — the job is left
# running for the caller to end as failed — {0, ''} when there was nothing to do, and
# {-3, ''} for an unknown job.
REQUEUE = (
    _NOW
    + """
local state = redis.call('HMGET', KEYS[1], 'status', 'owner', 'attempts', 'causes')
if not state[1] then return {-3, ''} end
if state[1] ~= 'running' then return {0, ''} end
if ARGV[5] ~= '' and state[2] ~= ARGV[5] then return {0, ''} end
if ARGV[6] == '1' then
  local deadline = redis.call('ZSCORE', KEYS[4], ARGV[2])
  if not deadline or tonumber(deadline) > now_ms then return {0, ''} end
end
local attempt = tonumber(state[3] or '0')
local causes = {}
if state[4] and state[4] ~= '' then causes = cjson.decode(state[4]) end
causes[#causes + 1] = 'attempt ' .. attempt .. ': ' .. ARGV[3]
if attempt >= tonumber(ARGV[4]) then return {2, cjson.encode(causes)} end
redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', '', 'causes', cjson.encode(causes))
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'job', ARGV[2])
local count = redis.call('LLEN', KEYS[2])
local new_status = 'queued'
local extra = ',"reason":' .. cjson.encode(ARGV[3])
redis.call('PUBLISH', ARGV[1], """
    + LUA_STATUS
    + """)
return {1, ''}
"""
)

# KEYS: meta, leases. ARGV: job_id, owner, lease_ms, abandon_ms (0: never). Returns 1 if the
# lease was extended, 0 if the job is no longer this owner's to run (it ended, was cancelled,
# was requeued), 2 if nobody has followed or polled it for ``abandon_ms`` (the owner cancels).
RENEW = (
    _NOW
    + """
local state = redis.call('HMGET', KEYS[1], 'status', 'owner', 'seen_ms')
if state[1] ~= 'running' or state[2] ~= ARGV[2] then return 0 end
local abandon_ms = tonumber(ARGV[4])
if abandon_ms > 0 and now_ms - tonumber(state[3] or '0') > abandon_ms then return 2 end
redis.call('ZADD', KEYS[2], 'XX', now_ms + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# KEYS: meta. Someone follows or polls the job now (Redis clock), for the abandonment check.
SEEN = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'seen_ms', now_ms)
end
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
