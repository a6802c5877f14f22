"""The scripts on an outside stream's keys (``StreamStore`` runs them), and their replies.

An outside stream (a Durable Stream written by others) has a job's key layout under its own
hash tag: a meta HASH (``kind`` = ``stream``; ``status`` ``running`` while open, ``done`` once
closed, so the hub and followers see a closed stream as an ended job), a LIST of chunks (one
per append, or one per JSON message; each byte one latin-1 code point), a LIST of their times,
and its channel, on which appends and the closure are announced as a job's tokens and end are.
Producer state lives in the meta (``p:<id>`` = ``epoch:seq``), as do ``seq`` (the last
``Stream-Seq``) and ``closed_by`` (the producer request that closed it). A sliding TTL is set
again on every write (``ttl``, seconds), an absolute expiry (``expire_at_ms``) on every key an
append creates.
"""

from __future__ import annotations

import enum

from ..notices import LUA_END, LUA_TOKENS
from . import NOW

# Pushes ARGV[first .. first + n - 1] and their times in slices Lua's stack takes; sets
# ``count``. Needs ``now`` and ``n``, ``first``.
_PUSH = (
    NOW
    + """
local offset = redis.call('LLEN', KEYS[2])
local count = offset
local i = first
while i < first + n do
  local last = math.min(i + 999, first + n - 1)
  local times = {}
  for j = i, last do times[#times + 1] = now end
  count = redis.call('RPUSH', KEYS[2], unpack(ARGV, i, last))
  redis.call('RPUSH', KEYS[3], unpack(times))
  i = last + 1
end
"""
)

# Every key of the stream expires as its meta says: a sliding TTL or an absolute time.
_EXPIRE = """
local expiry = redis.call('HMGET', KEYS[1], 'ttl', 'expire_at_ms')
local ttl, at = expiry[1], expiry[2]
for k = 1, 3 do
  if ttl and ttl ~= '' then redis.call('PEXPIRE', KEYS[k], tonumber(ttl) * 1000)
  elseif at and at ~= '' then redis.call('PEXPIREAT', KEYS[k], at) end
end
"""

# KEYS: meta, chunks, times. ARGV: content_type, media, ttl, expires_at, expire_at_ms, closed
# ('1' or ''), tenant, path, fork (the fork's configuration as text, '' for none), source (the
# fork's source id), n, then n chunks (a fork's: the inherited ones, copied). Returns
# {CREATED, count}, {EXISTS, count} when the same stream is there already, or a
# ``StreamCreate`` refusal.
CREATE = (
    """
local m = redis.call('HMGET', KEYS[1], 'kind', 'status', 'media', 'ttl', 'expires_at', 'deleted',
  'fork')
if m[1] then
  if m[1] ~= 'stream' or m[6] == '1' then return {-2} end
  local closed = m[2] ~= 'running'
  if m[3] == ARGV[2] and (m[4] or '') == ARGV[3] and (m[5] or '') == ARGV[4]
      and closed == (ARGV[6] == '1') and (m[7] or '') == ARGV[9] then
    return {0, redis.call('LLEN', KEYS[2])}
  end
  return {-1}
end
local n = tonumber(ARGV[11])
local first = 12
"""
    + _PUSH
    + """
redis.call('HSET', KEYS[1], 'kind', 'stream', 'status', ARGV[6] == '1' and 'done' or 'running',
  'content_type', ARGV[1], 'media', ARGV[2], 'encoding', 'latin-1', 'ttl', ARGV[3],
  'expires_at', ARGV[4], 'expire_at_ms', ARGV[5], 'tenant', ARGV[7], 'path', ARGV[8],
  'created_at', now, 'count', count, 'attempts', 0, 'fork', ARGV[9], 'source', ARGV[10])
"""
    + _EXPIRE
    + """
return {1, count}
"""
)


class StreamCreate(enum.IntEnum):
    """CREATE's reply code."""

    CREATED = 1
    EXISTS = 0  # with the same configuration: 200
    CONFLICT = -1  # another configuration: 409
    TAKEN = -2  # a deleted stream with live forks, or not an outside stream: 409


# KEYS: meta, chunks, times. ARGV: channel, media ('' when the body is empty), stream_seq,
# producer_id ('' for none), epoch, seq, close ('1' or ''), n, then n chunks. Validation in
# the protocol's precedence: closed first, then content type, producer, Stream-Seq. Returns
# {code, ...}: a ``StreamWrite``, then the count (or the producer's number it names).
APPEND = (
    """
local m = redis.call('HMGET', KEYS[1], 'kind', 'status', 'media', 'seq', 'closed_by', 'deleted')
if m[1] ~= 'stream' then return {-1} end
if m[6] == '1' then return {-2} end
local pid, n, close = ARGV[4], tonumber(ARGV[8]), ARGV[7] == '1'
local epoch, pseq = tonumber(ARGV[5]), tonumber(ARGV[6])
if m[2] ~= 'running' then
  local count = redis.call('LLEN', KEYS[2])
  if pid ~= '' and m[5] == pid .. ':' .. ARGV[5] .. ':' .. ARGV[6] then return {-4, count} end
  if n == 0 and close and pid == '' then return {-11, count} end
  return {-3, count}
end
if n > 0 and ARGV[2] ~= m[3] then return {-5} end
local field = 'p:' .. pid
if pid ~= '' then
  local state = redis.call('HGET', KEYS[1], field)
  if not state then
    if pseq ~= 0 then return {-8, 0} end
  else
    local sep = string.find(state, ':', 1, true)
    local held, last = tonumber(string.sub(state, 1, sep - 1)), tonumber(string.sub(state, sep + 1))
    if epoch < held then return {-6, held} end
    if epoch > held then
      if pseq ~= 0 then return {-7} end
    else
      if pseq <= last then return {-9, last} end
      if pseq > last + 1 then return {-8, last + 1} end
    end
  end
end
if ARGV[3] ~= '' then
  if m[4] and ARGV[3] <= m[4] then return {-10} end
  redis.call('HSET', KEYS[1], 'seq', ARGV[3])
end
if pid ~= '' then redis.call('HSET', KEYS[1], field, ARGV[5] .. ':' .. ARGV[6]) end
local first = 9
"""
    + _PUSH
    + """
if n > 0 then
  local tokens, times = {}, {}
  for i = first, first + n - 1 do
    tokens[#tokens + 1] = ARGV[i]
    times[#times + 1] = now
  end
  redis.call(publish, ARGV[1], """
    + LUA_TOKENS
    + """)
end
if close then
  redis.call('HSET', KEYS[1], 'status', 'done', 'count', count, 'finished_at', now)
  if pid ~= '' then
    redis.call('HSET', KEYS[1], 'closed_by', pid .. ':' .. ARGV[5] .. ':' .. ARGV[6])
  end
  local new_status, err, usage, sha = 'done', 'null', 'null', 'null'
  redis.call(publish, ARGV[1], """
    + LUA_END
    + """)
end
"""
    + _EXPIRE
    + """
return {0, count}
"""
)


class StreamWrite(enum.IntEnum):
    """APPEND's reply code."""

    APPENDED = 0
    NOT_FOUND = -1
    GONE = -2  # deleted while forks still read it
    CLOSED = -3  # with the final count
    DUPLICATE_CLOSE = -4  # the producer request that closed it, again: success
    TYPE_MISMATCH = -5
    STALE_EPOCH = -6  # with the producer's current epoch
    EPOCH_NEEDS_SEQ_0 = -7
    SEQUENCE_GAP = -8  # with the expected seq
    DUPLICATE = -9  # with the producer's last seq: success, nothing stored
    SEQ_REGRESSION = -10
    ALREADY_CLOSED = -11  # a close of a closed stream: success


# KEYS: meta, chunks, times. ARGV: channel. Deletes the stream (a follower hears its end) or,
# while forks hold a reference to it, marks it deleted (its URL answers 410). Returns
# {StreamDelete, source}: a deleted fork's source id, whose reference the caller releases.
DELETE = (
    NOW
    + """
local m = redis.call('HMGET', KEYS[1], 'kind', 'deleted', 'forks', 'source')
if m[1] ~= 'stream' then return {-1} end
if m[2] == '1' then return {-2} end
local count = redis.call('LLEN', KEYS[2])
if tonumber(m[3] or '0') > 0 then
  redis.call('HSET', KEYS[1], 'deleted', '1', 'status', 'cancelled')
else
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
end
local new_status, err, usage, sha = 'cancelled', '"deleted"', 'null', 'null'
redis.call(publish, ARGV[1], """
    + LUA_END
    + """)
if tonumber(m[3] or '0') > 0 then return {1, ''} end
return {0, m[4] or ''}
"""
)


class StreamDelete(enum.IntEnum):
    DELETED = 0
    SOFT_DELETED = 1  # forks still hold references to it
    NOT_FOUND = -1
    GONE = -2


# KEYS: a fork's source's meta. Takes a reference to the source for a new fork, if it is an
# outside stream not deleted. Returns 1, or 0 when there is no such source, -1 when deleted.
REFER = """
local m = redis.call('HMGET', KEYS[1], 'kind', 'deleted')
if m[1] ~= 'stream' then return 0 end
if m[2] == '1' then return -1 end
redis.call('HINCRBY', KEYS[1], 'forks', 1)
return 1
"""

# KEYS: meta, chunks, times of a fork's source. Gives back a fork's reference; a source deleted
# already goes once no fork holds it. Returns its own source id when it went (the caller
# releases that one in turn: the chain's cascade), else ''.
RELEASE = """
local m = redis.call('HMGET', KEYS[1], 'kind', 'deleted', 'source')
if m[1] ~= 'stream' then return '' end
local left = redis.call('HINCRBY', KEYS[1], 'forks', -1)
if left <= 0 and m[2] == '1' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return m[3] or ''
end
return ''
"""


# KEYS: meta, chunks, times. Sets a sliding TTL's deadline again (a read resets it).
TOUCH = _EXPIRE
