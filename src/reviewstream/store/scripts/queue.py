"""The scripts on a queue shard's keys (``JobQueue`` runs them): its stream and lease index.

None replies with a code: SETTLE's reply is unused, LAPSE's is an entry id or nil, EXTEND's a
truth value, EXTEND_ALL's a list of them, EXPIRED_LEASES' a list.
"""

from __future__ import annotations

from . import NOW

# KEYS: queue, leases (one shard's). ARGV: group, entry_id, lease member ('' for none),
# lease_ms. The shard side of taking a queue entry: acknowledges and deletes it, and gives the
# attempt the job side started its lease, unless the attempt has one already. Entry and lease
# change together, so a running attempt always has its lease or its entry still pending (whose
# next claim, after ``claim_idle_seconds``, gives it the lease).
SETTLE = (
    NOW
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
    NOW
    + """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline then return false end
if ARGV[5] == '1' and tonumber(deadline) > now_ms then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('XADD', KEYS[2], '*', 'job', ARGV[2], 'attempt', ARGV[3], 'cause', ARGV[4])
"""
)

# KEYS: leases. ARGV: lease member, lease_ms. Extends the lease: 1, or 0 when it is gone (a
# reaper took it: the attempt is lost).
EXTEND = (
    NOW
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS: leases (one shard's). ARGV: lease_ms, lease member... EXTEND for many leases of one
# shard at once (a worker renews its running jobs' in one step per shard): a list of 1
# (extended) or 0 (gone), one per member.
EXTEND_ALL = (
    NOW
    + """
local deadline = now_ms + tonumber(ARGV[1])
local found = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], deadline, ARGV[i])
    found[#found + 1] = 1
  else
    found[#found + 1] = 0
  end
end
return found
"""
)

# KEYS: leases (one shard's). ARGV: limit. Leases (``job#attempt``) whose deadline has passed.
EXPIRED_LEASES = (
    NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
"""
)
