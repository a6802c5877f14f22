"""Lua scripts: the store's atomic steps.

Each script is one atomic step on Redis, so a follower never sees a notification before its data
(or data without one), and a job ends exactly once, after its last token. Times come from Redis'
own clock (``TIME``) so that every process stamps tokens on one clock.

Every script names the keys of one hash tag, so each runs on one Redis Cluster slot: a job's
own keys (``{J}``), one queue shard's (``{qN}``: its stream and lease index), one tenant's, or a
single key. A transition that spans a job and its shard (claim, losing an attempt, finish,
renew) is two scripts, one on each side, ordered and fenced so that a process dying between
them leaves a state the next claim or reaper completes (ARCHITECTURE.md, "Redis data model").
Each attempt of a job writes under its own owner token (``worker#attempt``, set by CLAIM), so a
lost producer that comes back can write nothing. What the scripts publish is defined in
``notices``; ``notices.publishing`` makes their sharded pub/sub variant.
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

# KEYS: meta, chunks, times. ARGV: channel, status, error, usage_json, owner, retention_seconds,
# only_if_status ('' or statuses separated by spaces), attempt ('' or the attempt number the job
# must be at), expected_count, sha256. An empty owner ends the job whoever runs it (cancel,
# reapers); the digest is of the first ``expected_count`` tokens, so the call is refused if more
# were stored. Returns {1, attempt, shard, was_running} when this call ended the job (the caller
# then drops the attempt's lease on its shard), {0} when it had ended already (or is not in the
# status or at the attempt asked for), {-2} for a foreign owner, {-3} for an unknown job, {-4}
# when the job holds another number of tokens than ``expected_count`` (read again and retry).
FINISH = (
    _NOW
    + """
local state = redis.call('HMGET', KEYS[1], 'status', 'owner', 'attempts', 'shard')
local status = state[1]
if not status then return {-3} end
if status == 'done' or status == 'failed' or status == 'cancelled' then return {0} end
if ARGV[7] ~= '' and not string.find(' ' .. ARGV[7] .. ' ', ' ' .. status .. ' ', 1, true) then
  return {0}
end
if ARGV[5] ~= '' and state[2] ~= ARGV[5] then return {-2} end
local attempt = tonumber(state[3] or '0')
if ARGV[8] ~= '' and attempt ~= tonumber(ARGV[8]) then return {0} end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[9]) then return {-4} end
local channel, new_status, err_text, usage_json = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local sha, ttl = ARGV[10], tonumber(ARGV[6])
"""
    + _END
    + """
local was_running = 0
if status == 'running' then was_running = 1 end
return {1, attempt, tonumber(state[4] or '0'), was_running}
"""
)

# KEYS: meta, chunks. ARGV: channel, worker, entry_attempt, entry_cause, reset ('1': the new
# attempt starts over from the prompt), max_attempts. The job side of taking a queue entry that
# was made when the job was at attempt ``entry_attempt``. When the job is still queued at that
# attempt, it becomes running under ``worker#attempt`` (the owner token that fences every later
# write of this attempt), its meta no longer expires, and a later attempt announces itself.
# When the job is still running the attempt the entry says was lost, that requeue was left half
# done (its lease was taken and the entry added, then the process died): it is completed here
# first. Returns {1, attempt, stored token count} when claimed; {3, attempt} when this entry was
# claimed already (delivered twice: the caller makes sure the attempt has its lease); {2,
# causes} when the half-done requeue finds the attempts spent (the caller ends the job failed);
# {0} when the entry is stale (the job moved on or ended); {-3} for an unknown job.
CLAIM = (
    _NOW
    + """
local state = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'causes')
local status = state[1]
if not status then return {-3} end
local attempt, lost = tonumber(state[2] or '0'), tonumber(ARGV[3])
if status == 'running' and attempt == lost + 1 then return {3, attempt} end
local count = redis.call('LLEN', KEYS[2])
if status == 'running' and attempt == lost and lost > 0 then
  local causes = {}
  if state[3] and state[3] ~= '' then causes = cjson.decode(state[3]) end
  causes[#causes + 1] = 'attempt ' .. attempt .. ': ' .. ARGV[4]
  if attempt >= tonumber(ARGV[6]) then return {2, cjson.encode(causes)} end
  redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', '', 'causes', cjson.encode(causes))
  local new_status = 'queued'
  local extra = ',"reason":' .. cjson.encode(ARGV[4])
  redis.call('PUBLISH', ARGV[1], """
    + LUA_STATUS
    + """)
  status = 'queued'
end
if status ~= 'queued' or attempt ~= lost then return {0} end
attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[2] .. '#' .. attempt,
  'started_at', now, 'seen_ms', now_ms)
redis.call('PERSIST', KEYS[1])
if attempt > 1 then
  local extra = ''
  if ARGV[5] == '1' and count > 0 then extra = ',"reset":true' end
  local new_status = 'running'
  redis.call('PUBLISH', ARGV[1], """
    + LUA_STATUS
    + """)
end
return {1, attempt, count}
"""
)

# KEYS: queue, leases (one shard's). ARGV: group, entry_id, lease member ('' for none),
# lease_ms. The shard side of taking a queue entry: acknowledges and deletes it, and gives the
# attempt the job side started its lease, unless the attempt has one already. Entry and lease
# change together, so a running attempt always has its lease or its entry still pending (whose
# next claim, after ``claim_idle_seconds``, gives it the lease).
SETTLE = (
    _NOW
    + """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], 'NX', now_ms + tonumber(ARGV[4]), ARGV[3])
end
return 1
"""
)

# KEYS: leases, queue (one shard's). ARGV: lease member, job_id, attempt, cause, only_if_lapsed
# ('1' or ''). The shard side of losing an attempt, and the point where exactly one process
# wins: removes the attempt's lease (only if it lapsed, when asked) and adds the queue entry
# for the next attempt, naming the lost one and its cause. Returns the new entry's id, or nil
# when the lease is gone (another process won) or still holds.
LAPSE = (
    _NOW
    + """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline then return false end
if ARGV[5] == '1' and tonumber(deadline) > now_ms then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('XADD', KEYS[2], '*', 'job', ARGV[2], 'attempt', ARGV[3], 'cause', ARGV[4])
"""
)

# KEYS: meta, chunks. ARGV: channel, cause, max_attempts, attempt, owner ('' for any). The job
# side of losing an attempt, after LAPSE won: fenced by the attempt (and the owner, when given),
# it records the cause and sets the job queued for its next attempt, unless its attempts are
# spent. Returns {1, ''} when queued, {2, causes} (a JSON list naming every attempt's cause)
# when the attempts are spent — the job is left running for the caller to end as failed —, {0,
# ''} when the job is not running that attempt, and {-3, ''} for an unknown job.
REQUEUE = (
    _NOW
    + """
local state = redis.call('HMGET', KEYS[1], 'status', 'owner', 'attempts', 'causes')
if not state[1] then return {-3, ''} end
local attempt = tonumber(state[3] or '0')
if state[1] ~= 'running' or attempt ~= tonumber(ARGV[4]) then return {0, ''} end
if ARGV[5] ~= '' and state[2] ~= ARGV[5] then return {0, ''} end
local causes = {}
if state[4] and state[4] ~= '' then causes = cjson.decode(state[4]) end
causes[#causes + 1] = 'attempt ' .. attempt .. ': ' .. ARGV[2]
if attempt >= tonumber(ARGV[3]) then return {2, cjson.encode(causes)} end
redis.call('HSET', KEYS[1], 'status', 'queued', 'owner', '', 'causes', cjson.encode(causes))
local count = redis.call('LLEN', KEYS[2])
local new_status = 'queued'
local extra = ',"reason":' .. cjson.encode(ARGV[2])
redis.call('PUBLISH', ARGV[1], """
    + LUA_STATUS
    + """)
return {1, ''}
"""
)

# KEYS: meta. ARGV: owner, abandon_ms (0: never). The job side of renewing a lease: returns 1 if
# the attempt still runs the job (the caller then extends the lease: EXTEND), 0 if the job is
# no longer this owner's to run (it ended, was cancelled, was requeued), 2 if nobody has
# followed or polled it for ``abandon_ms`` (the owner cancels).
RENEW = (
    _NOW
    + """
local state = redis.call('HMGET', KEYS[1], 'status', 'owner', 'seen_ms')
if state[1] ~= 'running' or state[2] ~= ARGV[1] then return 0 end
local abandon_ms = tonumber(ARGV[2])
if abandon_ms > 0 and now_ms - tonumber(state[3] or '0') > abandon_ms then return 2 end
return 1
"""
)

# KEYS: leases. ARGV: lease member, lease_ms. Extends the lease; 0 when it is gone (a reaper
# took it: the attempt is lost).
EXTEND = (
    _NOW
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
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

# KEYS: leases (one shard's). ARGV: limit. Leases (``job#attempt``) whose deadline has passed.
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
