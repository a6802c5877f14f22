"""Jobs: create, short poll by offset, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from ...models import ErrorBody, JobCreated, JobPage, Links, ReviewRequest
from ..deps import JOB_ERRORS, JobId, Limit, Offset, Service

router = APIRouter(tags=["jobs"])


def links_for(request: Request, job_id: str) -> Links:
    base = request.scope.get("root_path", "")
    return Links(
        poll=f"{base}/jobs/{job_id}?offset=0",
        long_poll=f"{base}/jobs/{job_id}/long-poll",
        sse=f"{base}/jobs/{job_id}/events",
        ws=f"{base}/jobs/{job_id}/ws",
    )


@router.post(
    "/jobs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobCreated,
    responses={413: {"model": ErrorBody}, 422: JOB_ERRORS[422]},
)
async def create_job(body: ReviewRequest, request: Request, service: Service) -> JobCreated:
    """Start writing a review; the answer links to every delivery mode."""
    job_id, job_status = await service.create(body)
    return JobCreated(id=job_id, status=job_status, links=links_for(request, job_id))


@router.get("/jobs/{job_id}", response_model=JobPage, responses=JOB_ERRORS)
async def short_poll(
    job_id: JobId, service: Service, offset: Offset = 0, limit: Limit = None
) -> JobPage:
    """Short poll: the tokens stored from `offset` on, answered at once."""
    return await service.poll(job_id, offset, limit)


@router.delete(
    "/jobs/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**JOB_ERRORS, 409: {"model": ErrorBody, "description": "The job already ended."}},
)
async def cancel_job(job_id: JobId, service: Service) -> Response:
    """Cancel: the model's stream is closed and the job ends as `cancelled`."""
    await service.cancel(job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**JOB_ERRORS, 409: {"model": ErrorBody, "description": "The job already ended."}},
)
async def cancel_job_post(job_id: JobId, service: Service) -> Response:
    """Cancel, for clients that cannot send DELETE."""
    return await cancel_job(job_id, service)
