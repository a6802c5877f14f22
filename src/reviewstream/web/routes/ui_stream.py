"""The AI SDK's UI message stream: ``useChat`` follows a job with its own transport.

``DefaultChatTransport({api: "/jobs"})`` resumes a chat by ``GET /jobs/{chatId}/stream``; with
the job id as the chat id, every AI SDK front end follows a review. The SDK cannot resume inside
a part, so the stream always replays the job's text from its start (its transport's default,
``resumeStreamIsReplay``), live while the job runs. Everything else is the SSE route's: the
follower (ownership, stream quotas, one subscription per process), ``EventStreamResponse``
(heartbeats are SSE comments, so every ``data:`` line is a part), and the shared parser and error
table (an HTTP status before the stream starts, an ``error`` part after). When this server
drains, the stream ends without ``finish``: the client's message is left unfinished, and its
next resume (a reload) replays the job from another server.
"""

from __future__ import annotations

from typing import Any

from ...follow import Follower
from ...service import ReviewService
from ...tenancy import Principal
from ...wire import UI_STREAM_HEADER, ui_error, ui_start, ui_stream_part
from ..delivery import Operation, Route
from ..deps import JOB_ERRORS, json_errors
from ..event_stream import EventStreamResponse
from ..params import JOB_ID, Params
from .sse import Events, stream_response

# One event of the stream, as schemathesis reads an OpenAPI 3.1 event-stream schema.
UI_PART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "One UI message chunk as JSON (start, text-start, text-delta, "
            "text-end, finish, message-metadata, error, abort, data-status), or `[DONE]` last.",
        },
    },
}


class Parts(Events):
    """A follower's batches, notices and end as UI message stream parts."""

    __slots__ = ()
    encode = staticmethod(ui_stream_part)
    broke = staticmethod(ui_error)
    mode = "ui_stream"


async def job_ui_stream(
    service: ReviewService, params: Params, caller: Principal
) -> EventStreamResponse:
    def parts(follower: Follower) -> Parts:
        return Parts(follower, ui_start(follower.job_id))

    response = await stream_response(service, params.job_id, 0, caller, parts)
    response.raw_headers.append(UI_STREAM_HEADER)
    return response


ROUTE = Route(
    "job_ui_stream",
    "/jobs/{job_id}/stream",
    (JOB_ID,),
    endpoint=job_ui_stream,
    mode="ui_stream",
    held=True,
    operation=Operation(
        summary="Job UI Message Stream",
        description="The AI SDK's UI message stream (`useChat` with `DefaultChatTransport`, "
        "`api: '/jobs'`, the job id as chat id, `resume: true`): the job's text from its "
        "start, then `finish`, `error` (failed) or `abort` (cancelled), then `[DONE]`.",
        tags=("delivery",),
        responses={
            200: {
                "content": {"text/event-stream": {"schema": UI_PART_SCHEMA}},
                "description": "The stream (header `x-vercel-ai-ui-message-stream: v1`).",
            },
            **json_errors(JOB_ERRORS),
        },
    ),
)
