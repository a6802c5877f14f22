"""What routes share: the service dependency and the validated path and query parameters."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Path, Query
from starlette.requests import HTTPConnection

from ..service import ReviewService


async def get_service(connection: HTTPConnection) -> ReviewService:
    # async: a plain def would make FastAPI hop to a thread pool on every request.
    return cast(ReviewService, connection.state.service)


Service = Annotated[ReviewService, Depends(get_service)]
JobId = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
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
