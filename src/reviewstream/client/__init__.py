"""An async Python client for the reviewstream API.

``ReviewstreamClient`` creates jobs, reads them page by page, cancels them, and ``follow()``s a
job in any of the four delivery modes as one stream of ``TokenBatch`` items and a final ``End``::

    async with ReviewstreamClient("http://127.0.0.1:8000") as client:
        job = await client.create("Ada Lovelace", "Led the payments migration; mentors two")
        async for item in client.follow(job.id, mode="sse"):
            if isinstance(item, TokenBatch):
                print("".join(item.tokens), end="")

Resume is by offset, the server's contract: the client counts the tokens it has delivered, and
when a connection drops (or the server answers 5xx/429) it reconnects from that count, trimming
anything it already has and refusing to jump over a gap. Retries are bounded: ``max_retries``
consecutive failures without a new token raise ``ConnectionLost``. An answer that retrying
cannot fix (404, 422, a 4xxx WebSocket close) raises ``ClientError`` at once.

The exception tree::

    ClientError              the API refused (``status`` = HTTP status, ``message`` = its `error`)
    ├── ConnectionLost       no answer after the retries (``status`` is None)
    └── IntegrityError       the text followed from offset 0 does not match the end's ``sha256``

``websockets`` is needed only for ``mode="websocket"`` and is imported there, lazily.

The modules, each private and re-exported here: ``_client`` (``ReviewstreamClient``: requests,
each mode's connection, the reconnecting ``follow()``), ``_follow`` (the cursor and what each
mode's messages mean), ``_models`` (what the client returns), ``_errors`` (the tree above).
"""

from __future__ import annotations

from ..wire import MODES, Mode
from ._client import ReviewstreamClient
from ._errors import ClientError, ConnectionLost, IntegrityError
from ._models import End, Job, Page, TokenBatch

__all__ = [
    "ClientError",
    "ConnectionLost",
    "End",
    "IntegrityError",
    "Job",
    "MODES",
    "Mode",
    "Page",
    "ReviewstreamClient",
    "TokenBatch",
]
