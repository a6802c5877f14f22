"""Scriptable model upstreams on 127.0.0.1 that speak the OpenAI and Anthropic streaming formats.

A :class:`ScriptedUpstream` is a tiny raw ASGI app run under a real uvicorn (``running()``), so
providers are tested through real sockets, real chunked encoding and real disconnects. Each test
scripts the answers (:class:`Reply`: a status, headers, SSE frames and pauses, and how the
answer ends); the server records every request it received and notices when a client hangs up
before its answer finished (``client_gone``), which is how tests prove that closing or
cancelling a stream closes the upstream connection.

Usage::

    async with running(ScriptedUpstream()) as upstream:
        upstream.script(Reply(frames=openai_frames(["Hello", " world"])))
        provider = OpenAIProvider(http, base_url=upstream.url + "/v1", ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tests.support.servers import serve

Frame = bytes | float
"""An SSE frame to send as one chunk, or a pause in seconds."""


@dataclass
class Reply:
    """One scripted answer.

    ``frames`` are sent in order for a streaming answer; ``body`` is sent in one piece (error
    answers). ``cut`` ends the answer by dropping the connection mid-body, the way a crashed
    proxy does, instead of finishing the chunked body cleanly.
    """

    status: int = 200
    frames: list[Frame] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str = "text/event-stream"
    cut: bool = False


@dataclass
class Received:
    """A request as the upstream saw it; header names are lower case."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any


class ScriptedUpstream:
    """An ASGI app answering each request with the next scripted :class:`Reply`.

    The last reply is repeated once the script runs out, so ``script(Reply(status=500))`` means
    "always fail". With nothing scripted it answers 599 so a forgotten script is obvious.
    """

    def __init__(self) -> None:
        self.url = ""
        self.reset()

    def reset(self) -> None:
        """Forget the script, the recorded requests and any disconnect."""
        self.replies: list[Reply] = []
        self.requests: list[Received] = []
        self.client_gone = asyncio.Event()
        self.frames_sent = 0

    def script(self, *replies: Reply) -> None:
        """Append answers for the next requests, in order."""
        self.replies.extend(replies)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append(
            Received(
                method=scope["method"],
                path=scope["path"],
                headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
                json=json.loads(body) if body else None,
            )
        )
        reply = self.replies.pop(0) if len(self.replies) > 1 else _last(self.replies)
        sender = asyncio.create_task(self._answer(reply, send))
        watcher = asyncio.create_task(receive())  # resolves on http.disconnect
        done, pending = await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if sender not in done:
            self.client_gone.set()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _answer(self, reply: Reply, send: Any) -> None:
        headers = [(b"content-type", reply.content_type.encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        if reply.body:
            await send({"type": "http.response.body", "body": reply.body, "more_body": True})
        for frame in reply.frames:
            if isinstance(frame, bytes):
                await send({"type": "http.response.body", "body": frame, "more_body": True})
                self.frames_sent += 1
            else:
                await asyncio.sleep(frame)
        if reply.cut:
            # Returning without the final body message makes uvicorn drop the connection
            # without the terminating chunk: the client sees an incomplete body.
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _last(replies: list[Reply]) -> Reply:
    return replies[0] if replies else Reply(status=599, body=b"no reply scripted")


@contextlib.asynccontextmanager
async def running(upstream: ScriptedUpstream) -> AsyncIterator[ScriptedUpstream]:
    """Serve ``upstream`` on a free loopback port; sets and yields it with ``url`` filled in."""
    async with serve(upstream, timeout_graceful_shutdown=2) as url:
        upstream.url = url
        yield upstream


async def collect(stream: AsyncIterator[Any]) -> tuple[str, Any]:
    """Read a provider stream to its end (closing it however it ends): (text, usage or None)."""
    text: list[str] = []
    usage = None
    async with contextlib.aclosing(stream) as items:  # type: ignore[type-var]
        async for item in items:
            if isinstance(item, str):
                assert usage is None, "text after usage"
                text.append(item)
            else:
                usage = item
    return "".join(text), usage


# --- frames ---------------------------------------------------------------------------------


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE frame; ``data`` that is not a string is sent as JSON."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


OPENAI_DONE = b"data: [DONE]\n\n"


def openai_chunk(
    content: str | None = None,
    *,
    role: str | None = None,
    finish_reason: str | None = None,
    usage: Any = ...,
    omit_content: bool = False,
) -> bytes:
    """A ``chat.completion.chunk`` frame; ``usage=...`` leaves the usage field out."""
    delta: dict[str, Any] = {} if omit_content else {"content": content}
    if role is not None:
        delta["role"] = role
    chunk: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage is not ...:
        chunk["usage"] = usage
    return sse(chunk)


def openai_usage(prompt_tokens: int, completion_tokens: int) -> bytes:
    """The usage-only chunk OpenAI sends last when ``stream_options.include_usage`` is set."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return sse(
        {"id": "chatcmpl-test", "object": "chat.completion.chunk", "choices": [], "usage": usage}
    )


def openai_frames(
    texts: list[str], *, usage: tuple[int, int] | None = (11, 7), done: bool = True
) -> list[Frame]:
    """A well-formed stream as api.openai.com sends it: role, deltas, finish, usage, [DONE]."""
    frames: list[Frame] = [openai_chunk("", role="assistant", usage=None)]
    frames += [openai_chunk(text, usage=None) for text in texts]
    frames.append(openai_chunk(omit_content=True, finish_reason="stop", usage=None))
    if usage is not None:
        frames.append(openai_usage(*usage))
    if done:
        frames.append(OPENAI_DONE)
    return frames


def anthropic_event(kind: str, **fields: Any) -> bytes:
    """One Messages-API event frame, its ``type`` repeated in the data as Anthropic does."""
    return sse({"type": kind, **fields}, event=kind)


def anthropic_frames(
    texts: list[str],
    *,
    input_tokens: int = 13,
    output_tokens: int = 9,
    stop: bool = True,
) -> list[Frame]:
    """A well-formed Messages stream: start, a text block with deltas and a ping, delta, stop."""
    message: dict[str, Any] = {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-test",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    frames: list[Frame] = [
        anthropic_event("message_start", message=message),
        anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        anthropic_event("ping"),
    ]
    frames += [
        anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": t})
        for t in texts
    ]
    frames += [
        anthropic_event("content_block_stop", index=0),
        anthropic_event(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage={"output_tokens": output_tokens},
        ),
    ]
    if stop:
        frames.append(anthropic_event("message_stop"))
    return frames
