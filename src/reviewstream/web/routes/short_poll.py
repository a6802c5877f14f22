"""Short polling: the tokens stored from an offset on, answered at once."""

from __future__ import annotations

from ...observe.metrics import sent
from ...service import ReviewService
from ...tenancy import Principal
from ...wire import page_json
from ..delivery import Operation, Route
from ..deps import JOB_ERRORS, PAGE, JsonAnswer, json_errors
from ..params import JOB_ID, LIMIT, OFFSET, Params


async def short_poll(service: ReviewService, params: Params, caller: Principal) -> JsonAnswer:
    page = await service.poll(params.job_id, params.offset, params.limit, caller)
    return JsonAnswer(page_json(sent("short_poll", page)))


ROUTE = Route(
    "short_poll",
    "/jobs/{job_id}",
    (JOB_ID, OFFSET, LIMIT),
    endpoint=short_poll,
    operation=Operation(
        summary="Short Poll",
        description="Short poll: the tokens stored from `offset` on, answered at once.",
        tags=("jobs",),
        responses={200: PAGE, **json_errors(JOB_ERRORS)},
    ),
    shares_path=True,
    mode="short_poll",  # DELETE /jobs/{job_id} is the jobs router's cancel
)
