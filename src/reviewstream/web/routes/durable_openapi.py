"""How the OpenAPI document describes the Durable Streams routes (``durable``,
``durable_writes``): their parameters, bodies and answers, as the protocol has them.

The routes read their own requests (``Route.exchange``), so each declares here what it reads:
offsets are strings (16 digits, ``-1`` or ``now``), a stream's path may hold slashes, and the
write headers are the protocol's. Every refusal is our one error body (``ErrorBody``) in the
protocol's status; a ``HEAD`` answer has none.
"""

from __future__ import annotations

from typing import Any

from ...streams import offsets
from ..delivery import Operation
from ..params import JOB_ID, MAX_HOLD_SECONDS

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_TAGS = ("durable streams",)
_TEXT = {"schema": {"type": "string"}}
_OFFSET = f"^(-1|now|[0-9]{{{offsets.WIDTH}}})$"
# One event of a live=sse read (an OpenAPI 3.1 event stream's schema describes each event).
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["data", "control"]},
        "data": {
            "type": "string",
            "description": "data: the stream's bytes; control: {streamNextOffset, ...} in JSON.",
        },
        "id": {"type": "string", "pattern": f"^[0-9]{{{offsets.WIDTH}}}$"},
        "retry": {"type": "integer"},
    },
}


def _errors(**described: str) -> dict[int | str, dict[str, Any]]:
    """Error answers by status (``e409="..."``): our error body, in the protocol's statuses."""
    return {
        int(status[1:]): {"description": text, "content": _ERROR}
        for status, text in described.items()
    }


def _header(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": schema,
            "description": description}  # fmt: skip


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}  # fmt: skip


_AUTH = {
    "e401": "No credential, an unknown API key, or an expired or forged stream token.",
    "e403": "The credential may not do this (a stream token writes nothing).",
    "e503": "Storage unavailable (Retry-After).",
}
PATH = {
    "name": "path",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 1024},
    "description": "The stream's path below /v1/stream/ (slashes allowed; jobs/ is the jobs').",
}
READ_PARAMETERS = (
    _query(
        "offset",
        "Where to read from: an offset the server gave, -1 (the start) or now (the end).",
        {"type": "string", "pattern": _OFFSET},
    ),
    _query("live", "How to wait: a long poll, or an SSE stream.", {"enum": ["long-poll", "sse"]}),
    _query("cursor", "The Stream-Cursor of the last live answer.", {"type": "string"}),
    _query(
        "timeout",
        "Seconds a long poll holds (an extension; capped by the server's maximum).",
        {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_HOLD_SECONDS},
    ),
    _header("If-None-Match", "The ETag of a previous catch-up read.", {"type": "string"}),
    _header("Last-Event-ID", "SSE: resume from this offset.", {"type": "string"}),
)
_READ_ERRORS = _errors(
    e400="A malformed offset, live mode or timeout, or a live read without an offset.",
    e404="Unknown or expired stream, or another key's.",
    e429="A per-key limit: open streams (Retry-After).",
    **_AUTH,
)
_READ_ANSWERS: dict[int | str, dict[str, Any]] = {
    204: {"description": "A long poll that timed out, or reached the end of a closed stream."},
    304: {"description": "Not modified since the If-None-Match ETag."},
    **_READ_ERRORS,
}


def _read(summary: str, description: str, ok: dict[str, Any], *lead: dict[str, Any]) -> Operation:
    data: dict[int | str, dict[str, Any]] = {200: {"description": "Data, from the offset on."}}
    data[200]["content"] = ok
    return Operation(
        summary=summary,
        description=description,
        tags=_TAGS,
        responses=data | _READ_ANSWERS,
        parameters=(*lead, *READ_PARAMETERS),
    )


def _head(summary: str, description: str, *lead: dict[str, Any]) -> Operation:
    return Operation(
        summary=summary,
        description=description,
        tags=_TAGS,
        responses={200: {"description": "The stream's metadata, in headers."}, **_READ_ERRORS},
        parameters=lead,
    )


JOB_READ = _read(
    "Job As Durable Stream",
    "The job's text as a Durable Stream: a catch-up read, a long poll or SSE (read-only).",
    {"text/plain": _TEXT, "text/event-stream": {"schema": SSE_EVENT}},
    JOB_ID.openapi(),
)
JOB_HEAD = _head(
    "Job Stream Metadata", "The job's stream's next offset and state.", JOB_ID.openapi()
)
STREAM_READ = _read(
    "Read Stream",
    "A stream's data in its content type: a catch-up read, a long poll or SSE.",
    {"*/*": {}},
    PATH,
)
STREAM_HEAD = _head("Stream Metadata", "A stream's next offset, state and expiry.", PATH)

_BODY = {
    "required": False,
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "text/plain": _TEXT,
        "application/json": {},
    },
}
_WRITE_ERRORS = dict(
    e404="Unknown stream, or another key's; a fork's unknown source.",
    e405="A job's stream is read-only.",
    e409="Another configuration, a closed stream, a content type or sequence that does not fit.",
    e410="A deleted stream that forks still read.",
    e413="An append above REVIEWSTREAM_MAX_APPEND_BYTES.",
    **_AUTH,
)
_ON_WRITE = (
    _header("Stream-Closed", "true: close the stream (after this body).", {"type": "string"}),
)
STREAM_CREATE = Operation(
    summary="Create Stream",
    description="Create a stream (idempotent for the same configuration), or fork one.",
    tags=_TAGS,
    responses={
        200: {"description": "The stream exists as asked."},
        201: {"description": "Created."},
        **_errors(
            e400="Malformed headers (TTL, expiry, fork).",
            e429="A per-key limit: open streams or streams per minute (Retry-After).",
            **_WRITE_ERRORS,
        ),
    },
    parameters=(
        PATH,
        *_ON_WRITE,
        _header("Stream-TTL", "Seconds the stream lives after its last use.", {"type": "string"}),
        _header("Stream-Expires-At", "When the stream expires (RFC 3339).", {"type": "string"}),
        _header("Stream-Forked-From", "Fork this stream's URL.", {"type": "string"}),
        _header("Stream-Fork-Offset", "Where the fork diverges.", {"type": "string"}),
    ),
    request_body=_BODY,
)
STREAM_APPEND = Operation(
    summary="Append To Stream",
    description="Append to a stream (and close it), as an idempotent producer or not.",
    tags=_TAGS,
    responses={
        200: {"description": "Appended by a producer."},
        204: {"description": "Appended or closed; a producer's duplicate."},
        **_errors(e400="No body, no Content-Type, or malformed producer headers.", **_WRITE_ERRORS),
    },
    parameters=(
        PATH,
        *_ON_WRITE,
        _header("Stream-Seq", "A writer's sequence: each append's greater.", {"type": "string"}),
        _header("Producer-Id", "An idempotent producer's id.", {"type": "string"}),
        _header("Producer-Epoch", "Its epoch.", {"type": "string"}),
        _header("Producer-Seq", "Its sequence number in the epoch.", {"type": "string"}),
    ),
    request_body=_BODY,
)
STREAM_DELETE = Operation(
    summary="Delete Stream",
    description="Delete a stream.",
    tags=_TAGS,
    responses={
        204: {"description": "Deleted."},
        **_errors(e400="A malformed path.", **_WRITE_ERRORS),
    },
    parameters=(PATH,),
)
