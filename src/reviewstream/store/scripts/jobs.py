"""The scripts on a job's keys (``JobStore`` runs them), and their replies.

The scripts that announce need the local ``publish`` (``notices.announcing`` sets it): their
sources here start at the Redis clock prologue, but for APPEND's, whose times are the
producer's stamps on the Redis clock (``workers.clock``), which saves a ``TIME`` per append.
"""

from __future__ import annotations

import enum

from ..notices import LUA_END, LUA_STATUS, LUA_TOKENS
from . import NOW

# KEYS: meta, chunks, times. ARGV: channel, owner, offset, n, n tokens, then n times or none.
# (The meta hash's count is set at the end; while running, LLEN of the chunks is the count,
# which saves a command per append.) ``offset`` is where the producer believes the tokens go
# ('' to skip the check): an append retried after its reply was lost, alone or with tokens put
# since, finds the first of them stored already and stores only the rest, so nothing is stored
# twice. Times are the producer's stamps (seconds on the Redis clock, as decimal text: the
# moment it received each token); without them, the script's own ``TIME`` is every token's.
# Returns the new count, or an ``AppendRefusal``.
APPEND = (
    """
local state = redis.call('HMGET', KEYS[1], 'status', 'owner')
if state[1] ~= 'running' then return -1 end
if state[2] ~= ARGV[2] then return -2 end
local n = tonumber(ARGV[4])
local skip = 0
if ARGV[3] ~= '' then
  local have, expected = redis.call('LLEN', KEYS[2]), tonumber(ARGV[3])
  if have < expected or have > expected + n then return -3 end
  skip = have - expected
  if skip == n then return have end
end
local stamped = #ARGV >= 4 + 2 * n
local now = ''
if not stamped then
  local t = redis.call('TIME')
  now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
local tokens = {}
local times = {}
for i = 5 + skip, 4 + n do
  tokens[#tokens + 1] = ARGV[i]
  if stamped then times[#times + 1] = ARGV[i + n] else times[#times + 1] = now end
end
local count = redis.call('RPUSH', KEYS[2], unpack(tokens))
redis.call('RPUSH', KEYS[3], unpack(times))
local offset = count - #tokens
redis.call(publish, ARGV[1], """
    + LUA_TOKENS
    + """)
return count
"""
)


class AppendRefusal(enum.IntEnum):
    """APPEND's reply when it stored nothing; any other reply is the job's token count (>= 0)."""

    NOT_RUNNING = -1  # the job ended, or was requeued and waits for its next attempt
    OTHER_OWNER = -2  # another attempt runs the job
    WRONG_OFFSET = -3  # the job holds fewer than ``offset`` tokens, or more than ``offset`` plus
    # these


# KEYS: meta, chunks, times. ARGV: channel, status, error, usage_json, owner, retention_seconds,
# only_if_status ('' or statuses separated by spaces), attempt ('' or the attempt number the job
# must be at), expected_count, sha256, ends_channel. Sets the terminal status, the final count
# and the text's digest, announces the end (on the job's channel, and on its ends channel for
# the worker running it) and lets every key of the job expire after the retention. An empty
# owner ends the job whoever runs it (cancel, reapers); the digest is of the first
# ``expected_count`` tokens, so the call is refused if more were stored. Returns {Ending, ...}:
# {ENDED, attempt, shard, was_running} when this call ended the job (the caller then drops the
# attempt's lease on its shard), else {code}.
END = (
    NOW
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
local count = redis.call('LLEN', KEYS[2])
if count ~= tonumber(ARGV[9]) then return {-4} end
local new_status, err_text, usage_json = ARGV[2], ARGV[3], ARGV[4]
local sha, ttl = ARGV[10], tonumber(ARGV[6])
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
local notice = """
    + LUA_END
    + """
redis.call(publish, ARGV[1], notice)
redis.call(publish, ARGV[11], notice)
local was_running = 0
if status == 'running' then was_running = 1 end
return {1, attempt, tonumber(state[4] or '0'), was_running}
"""
)


class Ending(enum.IntEnum):
    """END's reply code (its first element)."""

    ENDED = 1  # this call ended the job
    REFUSED = 0  # it had ended already, or is not in the statuses or at the attempt asked for
    OTHER_OWNER = -2  # another attempt runs the job
    UNKNOWN_JOB = -3
    TOKENS_CHANGED = -4  # it holds another number of tokens than expected: read them again


# KEYS: meta, chunks. ARGV: channel, worker, entry_attempt, entry_cause, reset ('1': the new
# attempt starts over from the prompt), max_attempts. The job side of taking a queue entry that
# was made when the job was at attempt ``entry_attempt``. When the job is still queued at that
# attempt, it becomes running under ``worker#attempt`` (the owner token that fences every later
# write of this attempt), its meta no longer expires, and a later attempt announces itself.
# When the job is still running the attempt the entry says was lost, that requeue was left half
# done (its lease was taken and the entry added, then the process died): it is completed here
# first. Returns {AttemptStart, ...}: {STARTED, attempt, stored token count};
# {DELIVERED_TWICE, attempt}; {SPENT, causes}; {STALE}; {UNKNOWN_JOB}.
CLAIM = (
    NOW
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
  redis.call(publish, ARGV[1], """
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
  redis.call(publish, ARGV[1], """
    + LUA_STATUS
    + """)
end
return {1, attempt, count}
"""
)


class AttemptStart(enum.IntEnum):
    """CLAIM's reply code (its first element)."""

    STALE = 0  # the job moved on or ended: nothing to run
    STARTED = 1  # the next attempt runs under the claiming worker
    SPENT = 2  # a half-done requeue finds the attempts spent: the caller ends the job failed
    DELIVERED_TWICE = 3  # claimed from this entry already: the caller makes sure of its lease
    UNKNOWN_JOB = -3


# KEYS: meta, chunks. ARGV: channel, cause, max_attempts, attempt, owner ('' for any). The job
# side of losing an attempt, after LAPSE won: fenced by the attempt (and the owner, when given),
# it records the cause and sets the job queued for its next attempt, unless its attempts are
# spent. Returns {Requeue, causes}: causes is a JSON list naming every attempt's cause with SPENT
# (the job is left running for the caller to end as failed), else ''.
REQUEUE = (
    NOW
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
redis.call(publish, ARGV[1], """
    + LUA_STATUS
    + """)
return {1, ''}
"""
)


class Requeue(enum.IntEnum):
    """What letting a running job go found (REQUEUE's reply code)."""

    NOTHING = 0  # not running that attempt or under that owner, its lease holds, or another won
    QUEUED = 1  # back in the queue for its next attempt
    SPENT = 2  # its attempts were spent: it ended as failed, naming every cause
    UNKNOWN_JOB = -3  # the script's only: ``Store.requeue`` raises ``JobNotFound`` instead


# KEYS: meta. ARGV: owner, abandon_ms (0: never). The job side of renewing a lease: whether the
# attempt still runs the job (the caller then extends the lease: EXTEND). Returns a Renewal.
RENEW = (
    NOW
    + """
local state = redis.call('HMGET', KEYS[1], 'status', 'owner', 'seen_ms')
if state[1] ~= 'running' or state[2] ~= ARGV[1] then return 0 end
local abandon_ms = tonumber(ARGV[2])
if abandon_ms > 0 and now_ms - tonumber(state[3] or '0') > abandon_ms then return 2 end
return 1
"""
)


class Renewal(enum.IntEnum):
    """What renewing a lease found (RENEW's reply)."""

    LOST = 0  # the job is no longer this attempt's to run (ended, cancelled, requeued): stop
    RENEWED = 1
    ABANDONED = 2  # nobody followed or polled it for REVIEWSTREAM_ABANDON_SECONDS: cancel it


# KEYS: meta. Someone follows or polls the job now (Redis clock), for the abandonment check.
SEEN = (
    NOW
    + """
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'seen_ms', now_ms)
end
return 1
"""
)
