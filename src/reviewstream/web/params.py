"""What the delivery routes take from a request, read one way for every route and dialect.

A delivery route names the parameters it takes (``JOB_ID``, ``OFFSET``, ``LIMIT``, ``HOLD``,
``LAST_EVENT_ID``); ``read`` reads them from the ASGI scope and ``credentials`` reads the caller's
bearer token and ``?token=``. A malformed or out-of-range value is ``InvalidInput`` naming it
(422 in our own modes, WebSocket close 4422; a dialect with a published protocol answers its own
status). Each parameter also describes itself for the OpenAPI document, so what is documented is
what is read.

The rules, the same everywhere:

- integers are ASCII decimal digits only (``٣`` is no digit here) and offsets go up to 2^53, the
  largest integer every JSON client reads exactly;
- a query string is percent-decoded as a form (``+`` is a space); of a repeated parameter the
  last counts; an empty ``token`` is no token; names a route does not take are ignored;
- ``Authorization: Bearer <credentials>`` (the scheme in any case); any other scheme is none.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import unquote_plus

from starlette.types import Scope

from ..errors import InvalidInput
from ..streams import offsets

MAX_OFFSET = 2**53
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_LIMIT = 10000
MAX_HOLD_SECONDS = 300
DEFAULT_HOLD_SECONDS = 20.0

_JOB_ID = re.compile(JOB_ID_PATTERN)
_DIGITS = re.compile(r"[0-9]{1,20}")  # ASCII only: str.isdigit takes every script's digits
_NUMBER = re.compile(r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]{1,3})?|[0-9]+\.")


@dataclass(slots=True)
class Params:
    """A delivery request's parameters, defaulted where the route did not receive them."""

    job_id: str = ""
    offset: int = 0
    limit: int | None = None
    hold: float = DEFAULT_HOLD_SECONDS
    last_event_id: int | None = None

    @property
    def start(self) -> int:
        """Where a stream starts: ``Last-Event-ID`` (a browser's resume) wins over ``offset``."""
        return self.last_event_id if self.last_event_id is not None else self.offset


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: where it is, how it is read into ``Params``, how it is documented.

    ``kind`` is ``"id"`` (a job id), ``"integer"`` (from ``low`` to ``high``) or ``"seconds"``
    (above 0, at most ``high``); ``default`` None documents the parameter as nullable.
    """

    name: str
    where: str  # "path", "query" or "header"
    field: str  # the ``Params`` attribute it sets
    kind: str
    description: str
    high: int = 0
    low: int = 0
    default: int | float | None = None

    def parse(self, raw: str) -> str | int | float:
        if self.kind == "id":
            if _JOB_ID.fullmatch(raw) is None:
                self.refuse(f"job id must match {JOB_ID_PATTERN}, got {raw[:40]!r}")
            return raw
        if self.kind == "seconds":
            value = float(raw) if _NUMBER.fullmatch(raw) else math.nan
            if not 0 < value <= self.high:  # False for NaN
                self.refuse(
                    f"{self.name} must be a number of seconds above 0 and at most {self.high}, "
                    f"got {raw[:40]!r}"
                )
            return value
        if _DIGITS.fullmatch(raw) is None or not self.low <= int(raw) <= self.high:
            self.refuse(
                f"{self.name} must be an integer from {self.low} to {self.high}, got {raw[:40]!r}"
            )
        return int(raw)

    def refuse(self, problem: str) -> NoReturn:
        raise InvalidInput((self.where, self.name), problem)

    def openapi(self) -> dict[str, Any]:
        """The parameter as the OpenAPI document declares it."""
        schema: dict[str, Any]
        if self.kind == "id":
            schema = {"type": "string", "pattern": JOB_ID_PATTERN, "examples": [_EXAMPLE_ID]}
        elif self.kind == "seconds":
            schema = {"type": "number", "maximum": self.high, "exclusiveMinimum": 0}
        else:
            schema = {"type": "integer", "maximum": self.high, "minimum": self.low}
        if self.kind != "id" and self.default is None:
            schema = {"anyOf": [schema, {"type": "null"}]}
        elif self.default is not None:
            schema["default"] = self.default
        schema |= {"description": self.description, "title": self.name.replace("_", " ").title()}
        return {
            "name": self.name,
            "in": self.where,
            "required": self.where == "path",
            "schema": schema,
            "description": self.description,
        }


_EXAMPLE_ID = "3f2b9c0e8d7a4b6c9e1f0a2b3c4d5e6f"

JOB_ID = Param("job_id", "path", "job_id", "id", "The job id returned by POST /jobs.")
OFFSET = Param(
    "offset",
    "query",
    "offset",
    "integer",
    "How many tokens the client already has; delivery starts there.",
    high=MAX_OFFSET,
    default=0,
)
LIMIT = Param(
    "limit",
    "query",
    "limit",
    "integer",
    "At most this many tokens in the answer.",
    high=MAX_LIMIT,
    low=1,
)
HOLD = Param(
    "timeout",
    "query",
    "hold",
    "seconds",
    "Seconds to hold the request (capped by the server's maximum).",
    high=MAX_HOLD_SECONDS,
    default=DEFAULT_HOLD_SECONDS,
)
START_OFFSET = Param(
    "offset",
    "query",
    "offset",
    "integer",
    "Start offset when there is no Last-Event-ID.",
    high=MAX_OFFSET,
)
LAST_EVENT_ID = Param(
    "Last-Event-ID",
    "header",
    "last_event_id",
    "integer",
    "Resume after this offset (set by browsers).",
    high=MAX_OFFSET,
)


def read(scope: Scope, takes: tuple[Param, ...], job_id: str | None = None) -> Params:
    """The ``takes`` parameters of a request (``job_id``: its path parameter); ``InvalidInput``
    for the first that is malformed, in the order of ``takes``."""
    query = _query(scope["query_string"]) if scope["query_string"] else {}
    headers: dict[str, str] | None = None
    got = Params()
    for param in takes:
        if param.where == "path":
            raw: str | None = job_id
        elif param.where == "query":
            raw = query.get(param.name)
        else:
            if headers is None:
                headers = {}
                for name, value in scope["headers"]:
                    headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
            raw = headers.get(param.name.lower())
        if raw is not None:
            setattr(got, param.field, param.parse(raw))
    return got


def credentials(scope: Scope) -> tuple[str | None, str | None]:
    """The caller's ``Authorization: Bearer`` credentials and ``?token=``, either None."""
    bearer = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            bearer = bearer_of(value.decode("latin-1"))
            break
    query: bytes = scope["query_string"]
    token = _query(query).get("token") if b"token=" in query else None
    return bearer, token or None


def bearer_of(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer`` header, else None."""
    scheme, _, credentials = (authorization or "").partition(" ")
    credentials = credentials.strip()
    return credentials if credentials and scheme.lower() == "bearer" else None


def _query(query: bytes) -> dict[str, str]:
    """A query string's parameters (the last of a repeated one)."""
    text = query.decode("latin-1")
    if "%" not in text and "+" not in text:  # nothing to decode: most requests
        return dict(pair.partition("=")[::2] for pair in text.split("&") if pair)
    decoded: dict[str, str] = {}
    for pair in text.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            decoded[unquote_plus(name)] = unquote_plus(value)
    return decoded


@dataclass(frozen=True, slots=True)
class StreamRead:
    """A Durable Streams read: where from (None: ``now``, the end), how it waits (``live``:
    None for a catch-up read, ``long-poll`` or ``sse``), the cursor and ETag it echoes, and
    how long a long poll holds (``?timeout=``, an extension)."""

    offset: int | None
    live: str | None
    cursor: str | None
    if_none_match: str | None
    hold: float | None


STREAM_LIVE = ("long-poll", "sse")


def stream_read(scope: Scope) -> StreamRead:
    """A Durable Streams read's parameters; ``InvalidInput`` (400 in that dialect) for a
    malformed offset, a repeated or empty one, a live mode without an offset, or an unknown
    live mode. ``Last-Event-ID`` (an EventSource's resume) wins over ``offset`` in SSE."""
    query: dict[str, list[str]] = {}
    for pair in scope["query_string"].decode("latin-1").split("&"):
        if pair:
            name, _, value = pair.partition("=")
            query.setdefault(unquote_plus(name), []).append(unquote_plus(value))
    raw_offsets = query.get("offset", [])
    if len(raw_offsets) > 1 or raw_offsets == [""]:
        raise InvalidInput(("query", "offset"), "give one offset, not empty")
    live = query.get("live", [None])[-1]
    if live is not None and live not in STREAM_LIVE:
        raise InvalidInput(("query", "live"), f"live must be long-poll or sse, got {live[:40]!r}")
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    raw = raw_offsets[0] if raw_offsets else None
    last_event_id = headers.get("last-event-id")
    if live == "sse" and last_event_id:
        raw = last_event_id
    elif live is not None and raw is None:
        raise InvalidInput(("query", "offset"), f"live={live} needs an offset")
    hold = query.get("timeout", [None])[-1]
    return StreamRead(
        offset=offsets.decode(raw),
        live=live,
        cursor=query.get("cursor", [None])[-1],
        if_none_match=headers.get("if-none-match"),
        hold=None if hold is None else float(HOLD.parse(hold)),
    )
