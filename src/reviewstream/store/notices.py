"""The notices a job's channel carries: written by the store's Lua scripts, read by the hub.

Three shapes, and this module is the only one that knows them:

- tokens: ``{"offset": N, "ts": [T, ...], "tokens": [...]}`` — tokens ``[N, N + len)``, each
  with its time (seconds on the Redis clock: when the worker received it from the provider);
  a single number ``T`` (notices written before times were per token) is every token's;
- end: ``{"end": {"status", "next_offset", "error", "usage", "sha256", "ts"}}`` — published
  once, after the last token;
- status: ``{"status": {"status", "attempt", "offset", "reason"?, "reset"?}}`` — an attempt was
  lost and the job queued again, or a new attempt began (``models.JobNotice``).

The ``LUA_*`` expressions are composed into the scripts (``scripts.jobs``); ``parse_notice``
reads what they write. A publishing script announces with ``redis.call(publish, channel,
...)``: the local ``publish`` is set by the line ``announcing`` gives, which the store puts
before each script. So both variants are whole sources, each cached by its own SHA, and an
announcement costs the same one command in either.
"""

from __future__ import annotations

import json

from ..models import Batch, JobEnd, JobNotice

# A Lua string expression; needs the locals ``offset``, ``tokens`` and ``times`` (Lua arrays
# of the tokens and of their times as decimal text, spliced as JSON numbers).
LUA_TOKENS = """'{"offset":' .. offset .. ',"ts":[' .. table.concat(times, ',')
  .. '],"tokens":' .. cjson.encode(tokens) .. '}'"""

# A Lua string expression; needs ``new_status``, ``count``, ``now``, and ``err``, ``usage`` and
# ``sha`` (each already JSON text: a string, an object or ``null``).
LUA_END = """'{"end":{"status":"' .. new_status .. '","next_offset":' .. count
  .. ',"error":' .. err .. ',"usage":' .. usage .. ',"sha256":' .. sha .. ',"ts":' .. now
  .. '}}'"""

# A Lua string expression; needs ``new_status``, ``attempt``, ``count`` and ``extra`` (JSON
# members to add, each starting with a comma, or '').
LUA_STATUS = """'{"status":{"status":"' .. new_status .. '","attempt":' .. attempt
  .. ',"offset":' .. count .. extra .. '}}'"""

_PUBLISH = "local publish = 'PUBLISH'\n"
_SPUBLISH = "local publish = 'SPUBLISH'\n"


def announcing(*, sharded: bool) -> str:
    """The Lua line that sets ``publish``, the command the scripts announce with: SPUBLISH
    when ``sharded`` (sharded pub/sub, Redis >= 7, which a Redis Cluster delivers only to the
    nodes serving the channel's slot instead of broadcasting it to every node), else PUBLISH."""
    return _SPUBLISH if sharded else _PUBLISH


def parse_notice(data: str | bytes) -> Batch | JobEnd | JobNotice:
    """The batch, the end or the status change that a channel message announces."""
    notice = json.loads(data)
    end = notice.get("end")
    if end is not None:
        end.pop("ts", None)
        return JobEnd.model_validate(end)
    status = notice.get("status")
    if status is not None:
        return JobNotice.model_validate(status)
    tokens = notice["tokens"]
    ts = notice["ts"]
    return Batch(notice["offset"], tokens, ts if isinstance(ts, list) else [ts] * len(tokens))
