"""The scripts on a tenant's quota keys (``admission.Admission`` runs them), and their reply."""

from __future__ import annotations

import enum

from . import NOW

# KEYS: active, starts (one tenant's). ARGV: job_id, max_active, per_minute (0: no limit).
# Admits the job under the tenant's quotas, atomically. Returns {Quota, retry_after_ms}: the
# quota that refused the job (ADMITTED when none did), and when the per-minute one has room.
ADMIT = (
    NOW
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

# KEYS: open, starts (one tenant's streams written at /v1/stream/). ARGV: stream id, max_open,
# per_minute (0: no limit), this creation's member of starts (unique per request).
# Admits a PUT that may create the stream, as ADMIT admits a job; a stream already counted open
# (an idempotent re-creation) is admitted without counting again. Returns {Quota,
# retry_after_ms, counted}: counted is 1 when this request was counted (the caller takes it
# back when nothing was created).
ADMIT_STREAM = (
    NOW
    + """
local max_open, per_minute = tonumber(ARGV[2]), tonumber(ARGV[3])
if max_open > 0 then
  if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {0, 0, 0} end
  if redis.call('ZCARD', KEYS[1]) >= max_open then return {1, 0, 0} end
end
if per_minute > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - 60000)
  if redis.call('ZCARD', KEYS[2]) >= per_minute then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {2, tonumber(oldest[2]) + 60000 - now_ms, 0}
  end
  redis.call('ZADD', KEYS[2], now_ms, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], 60000)
end
if max_open > 0 then redis.call('ZADD', KEYS[1], now_ms, ARGV[1]) end
return {0, 0, 1}
"""
)


class Quota(enum.IntEnum):
    """ADMIT's reply code: the quota that refused the job."""

    ADMITTED = 0  # none did
    ACTIVE_JOBS = 1  # REVIEWSTREAM_MAX_ACTIVE_JOBS_PER_KEY
    JOBS_PER_MINUTE = 2  # REVIEWSTREAM_JOBS_PER_MINUTE_PER_KEY
    # ADMIT_STREAM answers 1 for REVIEWSTREAM_MAX_OPEN_DURABLE_STREAMS_PER_KEY and 2 for
    # REVIEWSTREAM_DURABLE_STREAMS_PER_MINUTE_PER_KEY: the same two kinds of limit.
