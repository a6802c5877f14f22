"""The script on a tenant's quota keys (``admission.Admission`` runs it), and its reply."""

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


class Quota(enum.IntEnum):
    """ADMIT's reply code: the quota that refused the job."""

    ADMITTED = 0  # none did
    ACTIVE_JOBS = 1  # REVIEWSTREAM_MAX_ACTIVE_JOBS_PER_KEY
    JOBS_PER_MINUTE = 2  # REVIEWSTREAM_JOBS_PER_MINUTE_PER_KEY
