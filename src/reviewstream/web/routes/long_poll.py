"""Long polling: the short poll's answer, held until there is something new."""

from __future__ import annotations

from ...observe.metrics import long_poll_answered, sent
from ...service import ReviewService
from ...tenancy import Principal
from ...wire import long_poll_body
from ..delivery import Operation, Route
from ..deps import JOB_ERRORS, PAGE, JsonAnswer, json_errors
from ..params import HOLD, JOB_ID, LIMIT, OFFSET, Params


async def long_poll(service: ReviewService, params: Params, caller: Principal) -> JsonAnswer:
    answer = await service.long_poll(
        params.job_id, params.offset, params.limit, params.hold, caller
    )
    long_poll_answered(sent("long_poll", answer))
    return JsonAnswer(long_poll_body(answer))


ROUTE = Route(
    "long_poll",
    "/jobs/{job_id}/long-poll",
    (JOB_ID, OFFSET, LIMIT, HOLD),
    endpoint=long_poll,
    operation=Operation(
        summary="Long Poll",
        description=(
            "Long poll: answers on the next token(s), the end, or after `timeout` with none."
        ),
        tags=("delivery",),
        responses={200: PAGE, **json_errors(JOB_ERRORS)},
    ),
    mode="long_poll",
)
