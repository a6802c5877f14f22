"""What routes share: the service dependency, the validated parameters, the error responses."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Path, Query
from starlette.requests import HTTPConnection

from ..models import ErrorBody
from ..service import ReviewService


async def get_service(connection: HTTPConnection) -> ReviewService:
    # async: a plain def would make FastAPI hop to a thread pool on every request.
    return cast(ReviewService, connection.state.service)


JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

Service = Annotated[ReviewService, Depends(get_service)]
JobId = Annotated[
    str,
    Path(
        pattern=JOB_ID_PATTERN,
        description="The job id returned by POST /jobs.",
        examples=["3f2b9c0e8d7a4b6c9e1f0a2b3c4d5e6f"],
    ),
]
Offset = Annotated[
    int,
    Query(ge=0, description="How many tokens the client already has; delivery starts there."),
]
Limit = Annotated[
    int | None, Query(ge=1, le=10000, description="At most this many tokens in the answer.")
]

# The error answers every route about one job documents in the OpenAPI document.
JOB_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody, "description": "Unknown job, or expired after retention."},
    422: {"model": ErrorBody, "description": "Invalid id, offset or body."},
}
