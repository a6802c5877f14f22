"""The notices a job's channel carries: written by the store's Lua scripts, read by the hub.

Two shapes, and this module is the only one that knows them:

- tokens: ``{"offset": N, "ts": T, "tokens": [...]}`` — tokens ``[N, N + len)``, all appended
  at Redis time ``T``;
- end: ``{"end": {"status", "next_offset", "error", "usage", "ts"}}`` — published once, after
  the last token.

The ``LUA_*`` expressions are spliced into ``scripts``; ``parse_notice`` reads what they write.
"""

from __future__ import annotations

import json

from .models import Batch, JobEnd

# A Lua string expression; needs the locals ``offset``, ``now`` and ``tokens`` (a Lua array).
LUA_TOKENS = """'{"offset":' .. offset .. ',"ts":' .. now .. ',"tokens":' .. cjson.encode(tokens)
  .. '}'"""

# A Lua string expression; needs ``new_status``, ``count``, ``now``, and ``err`` and ``usage``
# (each already JSON text: a string, an object or ``null``).
LUA_END = """'{"end":{"status":"' .. new_status .. '","next_offset":' .. count
  .. ',"error":' .. err .. ',"usage":' .. usage .. ',"ts":' .. now .. '}}'"""


def parse_notice(data: str | bytes) -> Batch | JobEnd:
    """The batch or the end that a channel message announces."""
    notice = json.loads(data)
    end = notice.get("end")
    if end is not None:
        end.pop("ts", None)
        return JobEnd.model_validate(end)
    tokens = notice["tokens"]
    return Batch(notice["offset"], tokens, [notice["ts"]] * len(tokens))
