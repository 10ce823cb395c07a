from __future__ import annotations

import logging

from fastapi import APIRouter, Query, status
from fastapi.responses import FileResponse, JSONResponse

from app.api.auth import require_scope
from app.api.deps import (
    CurrentPrincipal,
    IdempotencyKey,
    QueueDep,
    SessionDep,
    SettingsDep,
    ValidJob,
)
from app.api.idempotent import IdempotentCreate
from app.api.schemas.common import MAX_OFFSET, Page, error_responses
from app.api.schemas.jobs import EpochMetricsOut, JobCreate, JobMetricsOut, JobOut
from app.db.models import Job
from app.db.repositories import jobs as repo
from app.db.repositories import models as models_repo
from app.services import jobs as service

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger(__name__)

JobStatusQuery = Query(
    None, pattern="^(queued|running|succeeded|failed|cancelled)$", description="filter by status"
)


def job_out(job: Job, session: SessionDep) -> JobOut:
    return JobOut.from_job(job, models_repo.ids_by_job(session, [job.id]).get(job.id))


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses=error_responses(400, 404, 409, 413, 422, 503),
    summary="Submit a training job",
    dependencies=[require_scope("train")],
    description=(
        "Validates the spec (strategy, backbone, hyperparameters), stores the job as `queued` "
        "and hands its id to a worker. Poll `GET /v1/jobs/{id}` for progress."
    ),
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKey = None,
) -> JobOut | JSONResponse:
    idem = IdempotentCreate(
        session,
        principal=principal,
        endpoint="create_job",
        key=idempotency_key,
        request=[body.model_dump_json().encode()],
        ttl_s=settings.idempotency_ttl_s,
    )
    if replayed := idem.replayed():
        return replayed
    job = service.create_job(session, body.model_dump(mode="json"))
    out = job_out(job, session)
    if lost_race := idem.remember(status.HTTP_202_ACCEPTED, out):
        return lost_race
    # Commit before enqueueing: a worker that picks the id up at once must find the row.
    session.commit()
    try:
        queue.enqueue_job(job.id)
    except Exception as exc:
        log.exception("enqueue failed for job %s", job.id)
        service.mark_enqueue_failed(session, job, exc)
        idem.forget()  # a retry with this key submits anew
        session.commit()
        raise service.BrokerUnavailable(
            "the job was stored but the broker could not be reached, so it was marked failed; "
            "check TRANSFERLAB_BROKER_URL and GET /readyz, then submit again",
            details={"job_id": str(job.id)},
        ) from exc
    return out


@router.get(
    "",
    response_model=Page[JobOut],
    responses=error_responses(422),
    summary="List jobs, newest first",
    dependencies=[require_scope("read")],
)
def list_jobs(
    session: SessionDep,
    status: str | None = JobStatusQuery,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> Page[JobOut]:
    rows, total = repo.list_(session, status=status, limit=limit, offset=offset)
    model_ids = models_repo.ids_by_job(session, [j.id for j in rows])
    items = [JobOut.from_job(j, model_ids.get(j.id)) for j in rows]
    return Page[JobOut](items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses=error_responses(404),
    summary="A job: status, progress, latest metrics, timings, error",
    dependencies=[require_scope("read")],
)
def get_job(job: ValidJob, session: SessionDep) -> JobOut:
    return job_out(job, session)


@router.get(
    "/{job_id}/metrics",
    response_model=JobMetricsOut,
    responses=error_responses(404),
    summary="Per-epoch metrics: losses, validation accuracy, learning rate, images/s",
    dependencies=[require_scope("read")],
)
def get_job_metrics(job: ValidJob, session: SessionDep) -> JobMetricsOut:
    rows = repo.metrics(session, job.id)
    return JobMetricsOut(
        job_id=job.id,
        epochs=[EpochMetricsOut.model_validate(r) for r in rows],
        warnings=job.warnings or [],
    )


@router.get(
    "/{job_id}/features",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}, **error_responses(404, 409)},
    summary="Download the embeddings of an extract_features job",
    dependencies=[require_scope("read")],
    description=(
        "A zip of `features.npy` (N x D float32, one row per image), `index.csv` (row, split, "
        "label, class, path inside the dataset) and `meta.json` (backbone, feature layer, "
        "preprocessing, lineage). 409 `no_features` for other jobs or before it succeeded."
    ),
)
def download_features(job: ValidJob, settings: SettingsDep) -> FileResponse:
    bundle = service.features_bundle(job, settings.layout.features_dir(job.id))
    return FileResponse(bundle, media_type="application/zip", filename=f"features-{job.id}.zip")


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses=error_responses(404, 409),
    summary="Cancel a job",
    dependencies=[require_scope("train")],
    description=(
        "A queued job is cancelled at once. A running job gets `cancel_requested: true` and its "
        "worker stops at the next step boundary, then the status becomes `cancelled`."
    ),
)
def cancel_job(job: ValidJob, session: SessionDep) -> JobOut:
    return job_out(service.cancel_job(session, job.id), session)
