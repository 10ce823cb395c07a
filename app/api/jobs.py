from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, status
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from app.api.auth import require_scope
from app.api.deps import (
    CurrentPrincipal,
    DatabaseDep,
    IdempotencyKey,
    QueueDep,
    SessionDep,
    SettingsDep,
    ValidJob,
)
from app.api.events import EVENTS_EXAMPLE, job_events
from app.api.idempotent import IdempotentCreate
from app.api.schemas.common import MAX_OFFSET, ZIP_RESPONSE, Page, error_responses
from app.api.schemas.jobs import EpochMetricsOut, JobCreate, JobMetricsOut, JobOut
from app.db.models import Job
from app.db.repositories import jobs as repo
from app.db.repositories import models as models_repo
from app.jobspec import EXTRA_DATASET_FIELDS
from app.services import jobs as service

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

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
        "and hands its id to a worker. Poll `GET /v1/jobs/{id}` for progress. Domain "
        "adaptation: `target_dataset_id` (required by dann and instance_weighting, refused by "
        "the others), `labeled_target_dataset_id` (dann only, labelled) and `eval_dataset_id` "
        "(any training strategy, labelled); their classes must be among the source's. Errors: "
        "`target_dataset_required`, `target_dataset_not_used`, `labeled_target_not_supported`, "
        "`dataset_unlabeled`, `class_mismatch`, `eval_dataset_not_used` (422), "
        "`dataset_not_found` (404, `details.field` says which)."
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
        # The domain-adaptation fields only when set, so keys stored before they existed match.
        request=[body.model_dump_json(exclude=_unset_dataset_fields(body)).encode()],
        ttl_s=settings.idempotency_ttl_s,
    )
    if replayed := idem.replayed():
        return replayed
    job = service.create_job(session, body.model_dump(mode="json"))
    out = job_out(job, session)
    if lost_race := idem.remember(status.HTTP_202_ACCEPTED, out):
        return lost_race
    service.commit_and_enqueue(session, queue, job, on_failure=idem.forget)
    return out


def _unset_dataset_fields(body: JobCreate) -> set[str]:
    return {field for field in EXTRA_DATASET_FIELDS if getattr(body, field) is None}


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
    summary="Per-epoch metrics: losses, validation accuracy, learning rate, images/s, the eval "
    "set's loss and accuracy, the strategy's own figures (extra)",
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
    "/{job_id}/events",
    response_class=StreamingResponse,
    response_model=None,
    responses={
        200: {
            "description": "Server-Sent Events until the job ends",
            "content": {
                "text/event-stream": {"schema": {"type": "string"}, "example": EVENTS_EXAMPLE}
            },
        },
        **error_responses(404, 422),
    },
    summary="Live events of a job: status, step progress, each epoch's metrics, its end",
    dependencies=[require_scope("read")],
    description=(
        "Server-Sent Events (`text/event-stream`), read from the database, so any API process "
        "serves any job. Events: `status` (the job, on connect and when its status changes), "
        "`progress` "
        "(epoch, step, fraction), `metrics` (one per epoch, in order) and `end` (the final job; "
        "the stream then closes). Each event's `id` is the last epoch whose metrics were sent: "
        "reconnect with `Last-Event-ID` to get only later epochs. Idle streams send a "
        "`: keep-alive` comment. A stream also closes after `TRANSFERLAB_EVENTS_MAX_S` (15 s) "
        "without `end`: reconnect with `Last-Event-ID` (EventSource does so by itself). "
        "Example: `curl -N -H 'Authorization: Bearer ...' localhost:8000/v1/jobs/<id>/events`"
    ),
)
async def stream_job_events(
    job: ValidJob,
    db: DatabaseDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=1_000_000,
            description="the `id` of the last event received: resume after it",
        ),
    ] = None,
) -> StreamingResponse:
    stream = job_events(
        db,
        job.id,
        last_epoch=last_event_id or 0,
        poll_s=settings.events_poll_s,
        heartbeat_s=settings.events_heartbeat_s,
        max_s=settings.events_max_s,
    )
    # no-transform and X-Accel-Buffering: proxies (nginx) must pass each event on at once.
    headers = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@router.get(
    "/{job_id}/features",
    response_class=FileResponse,
    responses={200: ZIP_RESPONSE, **error_responses(404, 409)},
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
