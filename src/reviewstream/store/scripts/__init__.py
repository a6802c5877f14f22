"""Lua scripts: the store's atomic steps, one module per area beside the code that runs them
(``jobs``: a job's keys; ``queue``: a queue shard's; ``workers``: the worker registry;
``tenants``: a tenant's quota keys, run by ``admission``).

Each script is one atomic step on Redis, so a follower never sees a notification before its data
(or data without one), and a job ends exactly once, after its last token. Times are on Redis'
own clock, so that every process stamps on one clock: ``TIME`` in the scripts, and a token's
time is its worker's stamp on that clock (``workers.clock``: the worker's own clock, set by the
Redis time its heartbeats return), taken when the token came from the provider.

Every script names the keys of one hash tag, so each runs on one Redis Cluster slot: a job's
own keys (``{J}``), one queue shard's (``{qN}``: its stream and lease index), one tenant's, or a
single key. A transition that spans a job and its shard (claim, losing an attempt, ending,
renewing) is two scripts, one on each side, ordered and fenced so that a process dying between
them leaves a state the next claim or reaper completes (``store.lifecycle``; ARCHITECTURE.md,
"Redis data model"). Each attempt of a job writes under its own owner token (``worker#attempt``,
set by CLAIM), so a lost producer that comes back can write nothing.

A script whose reply is a code says which with an ``IntEnum`` defined beside it; its callers
compare the reply with the enum's members, never with bare numbers.
"""

# The Redis clock, as a decimal string with microseconds (``now``) and in milliseconds
# (``now_ms``). cjson writes numbers with 14 digits, too few for epoch microseconds, so times
# are spliced into JSON as text.
NOW = """
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
