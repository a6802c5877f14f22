"""Durable Streams writes at ``/v1/stream/{path}``: ``PUT`` creates, ``POST`` appends (and
closes), ``DELETE`` deletes — streams written by others, on the jobs' store and hub.

A write needs an API key when keys are configured (a stream token reads one job and writes
nothing: 403); the key owns the streams it creates, and another key's are a 404 to it. A job's
own stream (``/v1/stream/jobs/{id}``) is read-only: 405. An append's body is bounded by
``REVIEWSTREAM_MAX_APPEND_BYTES`` (413), not by the API's request limit. ``Stream-Seq`` is
scoped per stream. Every refusal is answered in the protocol's status and headers (409 with
``Stream-Closed`` for a closed stream, 403 with ``Producer-Epoch`` for a fenced producer, 409
with ``Producer-Expected-Seq`` for a gap).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope

from ...errors import (
    Forbidden,
    InvalidInput,
    JobNotFound,
    StreamConflict,
    StreamGone,
    TooLarge,
)
from ...service import ReviewService
from ...store import Producer, stream_id
from ...store.scripts.streams import StreamCreate, StreamDelete, StreamWrite
from ...streams import offsets, wire
from ...streams.wire import media_type
from ...tenancy import Principal
from ..delivery import Route
from ..handlers import error_response
from . import durable_openapi as doc
from .durable import OUTSIDE_STREAM, answer

_TTL = re.compile(r"0|[1-9][0-9]{0,9}")
_INTEGER = re.compile(r"[0-9]{1,16}")
_CONTENT_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+")
MAX_PATH = 1024
JOB_PREFIX = "jobs/"
PREFIX = "/v1/stream/"


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


def _path(scope: Scope, caller: Principal) -> str | None:
    """The path below ``/v1/stream/`` a write names, written by a key (a stream token reads one
    job: 403); None for a job's stream (read-only)."""
    path: str = scope["path_params"]["path"]
    if not path or len(path) > MAX_PATH:
        raise InvalidInput(("path", "path"), f"a stream path has 1 to {MAX_PATH} characters")
    if path.startswith(JOB_PREFIX):
        return None
    if caller.job_id is not None:
        raise Forbidden("a stream token reads one job; writing streams needs an API key")
    return path


def _read_only() -> Response:
    return _refuse(405, "a job's stream is read-only", Allow="GET, HEAD")


def _answer(status: int, **headers: str) -> Response:
    return Response(status_code=status, headers={**wire.SECURITY_HEADERS, **headers})


def _refuse(status: int, message: str, **headers: str) -> Response:
    """A refusal in the protocol's status and headers, with our one error body."""
    return error_response(status, message, headers={**wire.SECURITY_HEADERS, **headers})


async def _body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body (chunked or not); ``TooLarge`` past ``limit`` bytes."""
    length = _headers(scope).get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise TooLarge(f"an append takes at most {limit} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise TooLarge(f"an append takes at most {limit} bytes")
        parts.append(part)
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _chunks(body: bytes, json_mode: bool, *, creating: bool) -> list[str]:
    """The chunks a body stores: itself, or a JSON body's messages (one array level flattened).
    Bytes are kept as latin-1 code points (``store.streams``)."""
    if not body:
        return []
    if not json_mode:
        return [body.decode("latin-1")]
    try:
        value = json.loads(body)
    except ValueError:
        raise InvalidInput(("body", "json"), "the body is not valid JSON") from None
    messages = value if isinstance(value, list) else [value]
    if not messages and not creating:
        raise InvalidInput(("body", "json"), "an empty array appends nothing")
    return [
        json.dumps(m, ensure_ascii=False, separators=(",", ":")).encode().decode("latin-1")
        for m in messages
    ]


def _expiry(headers: dict[str, str]) -> tuple[str, str, str]:
    """``Stream-TTL`` and ``Stream-Expires-At`` (at most one), and the latter in ms."""
    ttl = headers.get("stream-ttl")
    expires = headers.get("stream-expires-at")
    if ttl is not None and expires is not None:
        raise InvalidInput(("header", "Stream-TTL"), "give Stream-TTL or Stream-Expires-At")
    if ttl is not None and _TTL.fullmatch(ttl) is None:
        raise InvalidInput(("header", "Stream-TTL"), "a whole number of seconds, no zero pad")
    at_ms = ""
    if expires is not None:
        try:
            at = datetime.fromisoformat(expires.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidInput(("header", "Stream-Expires-At"), "an RFC 3339 time") from None
        if at.tzinfo is None:
            raise InvalidInput(("header", "Stream-Expires-At"), "an RFC 3339 time with offset")
        at_ms = str(int(at.timestamp() * 1000))
    return ttl or "", expires or "", at_ms


async def _owned(service: ReviewService, sid: str, caller: Principal) -> None:
    """The caller may write ``sid``: its key created it (404 otherwise, as for reading)."""
    meta = await service.store.streams.meta(sid)
    if not caller.may_see(sid, meta.tenant):
        raise JobNotFound(sid)


async def create(
    service: ReviewService, scope: Scope, receive: Receive, caller: Principal
) -> ASGIApp:
    path = _path(scope, caller)
    if path is None:
        return _read_only()
    headers = _headers(scope)
    _expiry(headers)  # malformed headers are a 400 before the body is read or anything counted
    _fork_request(headers)
    body = await _body(scope, receive, service.settings.max_append_bytes)
    sid = stream_id(path)
    # The key's stream quotas (429); what a PUT that creates nothing counted is given back.
    counted = await service.admission.admit_stream(caller, sid)
    created = False
    try:
        response, created = await _create(service, scope, caller, path, headers, body)
    finally:
        if counted is not None and not created:
            await service.admission.forget_stream(caller, sid, counted)
    return response


async def _create(
    service: ReviewService,
    scope: Scope,
    caller: Principal,
    path: str,
    headers: dict[str, str],
    body: bytes,
) -> tuple[Response, bool]:
    """The stream created (True) or found as asked (False), or the protocol's refusal."""
    given = headers.get("content-type", "").strip()
    content_type = given if _CONTENT_TYPE.match(given) else "application/octet-stream"
    closed = headers.get("stream-closed", "").lower() == "true"
    fork = _fork_request(headers)
    sid = stream_id(path)
    ttl, expires, at_ms = _expiry(headers)
    streams = service.store.streams
    chunks: list[str] = []
    config = source = ""
    if fork is not None:
        source, origin = fork[0], await _source(service, fork, caller)
        if _CONTENT_TYPE.match(given) and media_type(given) != origin.media:
            return _refuse(409, "a fork has its source's content type"), False
        content_type, chunks = origin.content_type, origin.chunks
        if not ttl and not expires:
            ttl, expires, at_ms = origin.ttl, origin.expires_at, origin.expire_at_ms
        config = origin.config
        taken = await streams.refer(source)
        if taken <= 0:
            raise JobNotFound(source) if taken == 0 else StreamConflict(source)
    media = media_type(content_type)
    chunks += _chunks(body, media == "application/json", creating=True)
    code, count = await streams.create(
        sid,
        path=path,
        content_type=content_type,
        media=media,
        chunks=chunks,
        ttl=ttl,
        expires_at=expires,
        expire_at_ms=at_ms,
        closed=closed,
        tenant=caller.tenant,
        fork=config,
        source=source,
    )
    if source and code is not StreamCreate.CREATED:
        await streams.release(source)  # the reference it took is not needed
    if code is StreamCreate.CONFLICT or code is StreamCreate.TAKEN:
        return _refuse(409, "the stream exists with another configuration"), False
    if code is StreamCreate.EXISTS:
        await _owned(service, sid, caller)
    out = {"Content-Type": content_type, wire.NEXT_OFFSET: offsets.encode(count)}
    if closed:
        out[wire.CLOSED] = "true"
    if code is StreamCreate.CREATED:
        out["Location"] = _location(scope, path)
        return _answer(201, **out), True
    return _answer(200, **out), False


@dataclass(frozen=True, slots=True)
class Origin:
    """What a fork takes from its source: its shape and expiry, the chunks it inherits (a
    copy: the fork's own slot holds them, so reads, the hub and appends treat it as any
    stream), and its configuration as text (an idempotent re-creation compares it)."""

    content_type: str
    media: str
    ttl: str
    expires_at: str
    expire_at_ms: str
    chunks: list[str]
    config: str


def _fork_request(headers: dict[str, str]) -> tuple[str, int | None, int] | None:
    """A fork's source id, offset (None: the source's end) and sub-offset, checked."""
    raw_sub = headers.get("stream-fork-sub-offset")
    source = headers.get("stream-forked-from")
    if source is None:
        if raw_sub is not None or "stream-fork-offset" in headers:
            raise InvalidInput(("header", "Stream-Forked-From"), "a fork names its source")
        return None
    sub = 0
    if raw_sub is not None:
        if _TTL.fullmatch(raw_sub) is None:
            raise InvalidInput(("header", "Stream-Fork-Sub-Offset"), "a non-negative integer")
        sub = int(raw_sub)
    raw_offset = headers.get("stream-fork-offset")
    if sub and raw_offset is None:
        raise InvalidInput(("header", "Stream-Fork-Offset"), "a sub-offset needs an offset")
    offset = None
    if raw_offset is not None:
        offset = offsets.decode(raw_offset, ("header", "Stream-Fork-Offset"))
    path = source.split("?", 1)[0]
    path = path[len(PREFIX) :] if path.startswith(PREFIX) else path.lstrip("/")
    if not path or path.startswith(JOB_PREFIX):
        raise JobNotFound(path[:64])  # only outside streams fork
    return stream_id(path), offset, sub


async def _source(
    service: ReviewService, fork: tuple[str, int | None, int], caller: Principal
) -> Origin:
    """The source's part a fork inherits; 404 (none, or not the caller's), 409 (deleted), 400
    (an offset or sub-offset past its data)."""
    sid, offset, sub = fork
    meta, count, chunks = await service.store.streams.source(sid, None if sub else offset)
    if meta["kind"] != "stream" or not caller.may_see(sid, meta["tenant"]):
        raise JobNotFound(sid)
    if meta["deleted"] == "1":
        raise StreamConflict(sid)
    anchor = count if offset is None else offset
    if anchor > count:
        raise InvalidInput(("header", "Stream-Fork-Offset"), "past the source's end")
    inherited = chunks[:anchor]
    if sub:
        json_mode = meta["media"] == "application/json"
        if anchor >= count or (json_mode and anchor + sub > count):
            raise InvalidInput(("header", "Stream-Fork-Sub-Offset"), "past the source's data")
        if json_mode:
            inherited = chunks[: anchor + sub]
        elif sub > len(chunks[anchor]):
            raise InvalidInput(("header", "Stream-Fork-Sub-Offset"), "past the next append")
        else:
            inherited.append(chunks[anchor][:sub])
    return Origin(
        content_type=meta["content_type"],
        media=meta["media"],
        ttl=meta["ttl"],
        expires_at=meta["expires_at"],
        expire_at_ms=meta["expire_at_ms"],
        chunks=inherited,
        config=f"{sid}|{anchor}|{sub}",
    )


def _location(scope: Scope, path: str) -> str:
    """The new stream's absolute URL (the protocol's clients parse it as one)."""
    host = _headers(scope).get("host")
    if host is None:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    # The path as the request's URL spelled it (percent-encoded), so that any path is a header.
    quoted = quote(path, safe="/")
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}/v1/stream/{quoted}"


def _producer(headers: dict[str, str]) -> Producer | None:
    values = [headers.get(h) for h in ("producer-id", "producer-epoch", "producer-seq")]
    if all(v is None for v in values):
        return None
    pid, epoch, seq = values
    if pid is None or epoch is None or seq is None or not pid:
        raise InvalidInput(("header", "Producer-Id"), "give Producer-Id, -Epoch and -Seq")
    for name, value in (("Producer-Epoch", epoch), ("Producer-Seq", seq)):
        if _INTEGER.fullmatch(value) is None or int(value) > offsets.MAX_OFFSET - 1:
            raise InvalidInput(("header", name), "a non-negative integer below 2^53")
    return Producer(pid, int(epoch), int(seq))


async def append(
    service: ReviewService, scope: Scope, receive: Receive, caller: Principal
) -> ASGIApp:
    path = _path(scope, caller)
    if path is None:
        return _read_only()
    headers = _headers(scope)
    producer = _producer(headers)
    close = headers.get("stream-closed", "").lower() == "true"
    body = await _body(scope, receive, service.settings.max_append_bytes)
    sid = stream_id(path)
    await _owned(service, sid, caller)
    if not body and not close:
        raise InvalidInput(("body", "body"), "an append needs a body (or Stream-Closed: true)")
    content_type = headers.get("content-type")
    if body and not content_type:
        raise InvalidInput(("header", "Content-Type"), "an append needs a Content-Type")
    media = media_type(content_type or "")
    chunks = _chunks(body, media == "application/json", creating=False)
    written = await service.store.streams.append(
        sid,
        media=media if body else "",
        chunks=chunks,
        seq=headers.get("stream-seq", ""),
        producer=producer,
        close=close,
    )
    return _written(written.code, written.value, producer if chunks else None, close, producer)


def _written(
    code: StreamWrite,
    value: int,
    appender: Producer | None,
    close: bool,
    producer: Producer | None,
) -> Response:
    """An append's answer in the protocol's status and headers: 200 when a producer stored
    data (``appender``), 204 for a plain append or a close-only request."""
    epoch = {"Producer-Epoch": str(producer.epoch)} if producer else {}
    if code is StreamWrite.APPENDED:
        out = {wire.NEXT_OFFSET: offsets.encode(value), **epoch}
        if producer:
            out["Producer-Seq"] = str(producer.seq)
        if close:
            out[wire.CLOSED] = "true"
        return _answer(200 if appender else 204, **out)
    if code is StreamWrite.NOT_FOUND:
        raise JobNotFound("stream")
    if code is StreamWrite.GONE:
        raise StreamGone("stream")
    if code is StreamWrite.CLOSED:
        closed = {wire.CLOSED: "true", wire.NEXT_OFFSET: offsets.encode(value)}
        return _refuse(409, "the stream is closed", **closed)
    if code is StreamWrite.ALREADY_CLOSED:
        return _answer(204, **{wire.CLOSED: "true", wire.NEXT_OFFSET: offsets.encode(value)})
    if code is StreamWrite.DUPLICATE_CLOSE:
        assert producer is not None
        return _answer(
            204,
            **{wire.CLOSED: "true", wire.NEXT_OFFSET: offsets.encode(value)},
            **epoch,
            **{"Producer-Seq": str(producer.seq)},
        )
    if code is StreamWrite.DUPLICATE:
        return _answer(204, **epoch, **{"Producer-Seq": str(value)})
    if code is StreamWrite.STALE_EPOCH:
        return _refuse(
            403, "a newer producer epoch writes this stream", **{"Producer-Epoch": str(value)}
        )
    if code is StreamWrite.EPOCH_NEEDS_SEQ_0:
        return _refuse(400, "a new producer epoch starts at Producer-Seq 0")
    if code is StreamWrite.SEQUENCE_GAP:
        assert producer is not None
        seqs = {"Producer-Expected-Seq": str(value), "Producer-Received-Seq": str(producer.seq)}
        return _refuse(409, "a gap in Producer-Seq", **seqs)
    # a content type that differs, or a Stream-Seq that does not increase
    return _refuse(409, "the append's Content-Type or Stream-Seq does not fit the stream")


async def delete(
    service: ReviewService, scope: Scope, receive: Receive, caller: Principal
) -> ASGIApp:
    path = _path(scope, caller)
    if path is None:
        return _read_only()
    sid = stream_id(path)
    await _owned(service, sid, caller)
    code = await service.store.streams.delete(sid)
    if code is StreamDelete.NOT_FOUND:
        raise JobNotFound(sid)
    if code is StreamDelete.GONE:
        raise StreamGone(sid)
    return _answer(204)


WRITE_ROUTES = (
    Route("stream_create", OUTSIDE_STREAM, (), operation=doc.STREAM_CREATE, exchange=create,
          answer=answer, method="PUT"),
    Route("stream_append", OUTSIDE_STREAM, (), operation=doc.STREAM_APPEND, exchange=append,
          answer=answer, method="POST"),
    Route("stream_delete", OUTSIDE_STREAM, (), operation=doc.STREAM_DELETE, exchange=delete,
          answer=answer, method="DELETE"),
)  # fmt: skip
