"""Jobs: create and cancel (the short poll is a delivery route: ``short_poll``)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request, Response, status

from ...models import ErrorBody, JobCreated, Links, ReviewRequest
from ..deps import CREATE_ERRORS, JOB_ERRORS, Caller, JobId, Service

router = APIRouter(tags=["jobs"])

_CANCEL_ERRORS = {**JOB_ERRORS, 409: {"model": ErrorBody, "description": "The job already ended."}}


def links_for(request: Request, job_id: str, token: str | None) -> Links:
    """Where to follow the job in each mode; each link carries the job's stream token, if any."""
    root = request.scope.get("root_path", "")
    base = f"{root}/jobs/{job_id}"
    auth = f"token={quote(token)}" if token else ""
    return Links(
        poll=f"{base}?offset=0" + (f"&{auth}" if auth else ""),
        long_poll=f"{base}/long-poll" + (f"?{auth}" if auth else ""),
        sse=f"{base}/events" + (f"?{auth}" if auth else ""),
        ws=f"{base}/ws" + (f"?{auth}" if auth else ""),
        ui_stream=f"{base}/stream" + (f"?{auth}" if auth else ""),
        durable_stream=f"{root}/v1/stream/jobs/{job_id}" + (f"?{auth}" if auth else ""),
    )


@router.post(
    "/jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobCreated,
    responses=CREATE_ERRORS,
)
async def create_job(
    body: ReviewRequest, request: Request, service: Service, caller: Caller
) -> JobCreated:
    """Start writing a review; the answer links to every delivery mode."""
    job_id, job_status = await service.create(body, caller)
    token = service.stream_token(job_id, caller)
    return JobCreated(id=job_id, status=job_status, links=links_for(request, job_id, token))


@router.delete("/jobs/{job_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_CANCEL_ERRORS)
async def cancel_job(job_id: JobId, service: Service, caller: Caller) -> Response:
    """Cancel: the model's stream is closed and the job ends as `cancelled`."""
    await service.cancel(job_id, caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/jobs/{job_id}/cancel", status_code=status.HTTP_204_NO_CONTENT, responses=_CANCEL_ERRORS
)
async def cancel_job_post(job_id: JobId, service: Service, caller: Caller) -> Response:
    """Cancel, for clients that cannot send DELETE."""
    return await cancel_job(job_id, service, caller)
