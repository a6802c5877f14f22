"""Long polling: the short poll's answer, held until there is something new."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from ...models import JobPage
from ..deps import (
    JOB_ERRORS,
    PRIVATE_HEADERS,
    Caller,
    JobId,
    Limit,
    Offset,
    PrivateJSONResponse,
    Service,
)

router = APIRouter(tags=["delivery"])


@router.get(
    "/jobs/{job_id}/long-poll",
    response_model=JobPage,
    response_class=PrivateJSONResponse,
    responses=JOB_ERRORS,
)
async def long_poll(
    job_id: JobId,
    service: Service,
    caller: Caller,
    offset: Offset = 0,
    limit: Limit = None,
    hold_seconds: Annotated[
        float,
        Query(
            alias="timeout",
            gt=0,
            le=300,
            description="Seconds to hold the request (capped by the server's maximum).",
        ),
    ] = 20.0,
) -> Response:
    """Long poll: answers on the next token(s), the end, or after `timeout` with none."""
    body = await service.long_poll(job_id, offset, limit, hold_seconds, caller)
    return Response(body, headers=PRIVATE_HEADERS, media_type="application/json")
