"""Resumable dataset uploads: create, PUT parts, ask what is stored, complete or abort."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Header, Path, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from app.api.auth import require_scope
from app.api.deps import CurrentPrincipal, SessionDep, SettingsDep
from app.api.schemas.common import error_responses
from app.api.schemas.datasets import DatasetOut
from app.api.schemas.uploads import PartOut, UploadCreate, UploadOut
from app.db.models import Upload
from app.services import uploads as service
from app.settings import Settings
from app.storage import parts as store

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


def _out(settings: Settings, upload: Upload) -> UploadOut:
    return UploadOut(
        id=upload.id,
        filename=upload.filename,
        name=upload.name,
        dedupe=upload.dedupe,
        kind=upload.kind,
        size=upload.size,
        part_size=upload.part_size,
        status=upload.status,  # type: ignore[arg-type]
        dataset_id=upload.dataset_id,
        created_at=upload.created_at,
        expires_at=upload.expires_at,
        **service.progress(settings, upload),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadOut,
    responses=error_responses(400, 413, 422),
    summary="Start a resumable dataset upload",
    dependencies=[require_scope("train")],
    description=(
        "For archives too large to send in one request. Declare the size; then PUT each part to "
        "`/v1/uploads/{id}/parts/{n}` (1-based, `part_size` bytes, the last one the rest) with "
        "a `Content-SHA256` (hex) or `Content-MD5` (base64) header; after a dropped connection "
        "GET the upload and send the parts listed in `missing`; then POST `.../complete`, which "
        "ingests the archive exactly as `POST /v1/datasets` does. Idle uploads expire "
        "(`TRANSFERLAB_UPLOAD_TTL_S`) and are swept with their parts."
    ),
)
def create_upload(
    body: UploadCreate, session: SessionDep, settings: SettingsDep, principal: CurrentPrincipal
) -> UploadOut:
    upload = service.create_upload(
        session, settings, api_key_id=principal.key_id, size=body.size,
        part_size=body.part_size, filename=body.filename, name=body.name, dedupe=body.dedupe,
        kind=body.kind,
    )  # fmt: skip
    session.commit()
    return _out(settings, upload)


@router.get(
    "/{upload_id}",
    response_model=UploadOut,
    responses=error_responses(404),
    summary="An upload: the parts stored and the parts missing",
    dependencies=[require_scope("train")],
)
def get_upload(
    upload_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: CurrentPrincipal
) -> UploadOut:
    return _out(settings, service.get_upload(session, upload_id, principal.key_id))


@router.put(
    "/{upload_id}/parts/{number}",
    response_model=PartOut,
    responses=error_responses(400, 404, 409, 413, 422),
    summary="Store one part (the raw bytes as the body), verified against its checksum",
    dependencies=[require_scope("train")],
    description=(
        'Example: `curl -X PUT -H "Content-SHA256: $(sha256sum part | cut -c1-64)" '
        "--data-binary @part $API/v1/uploads/$ID/parts/3`. A part is stored whole or not at "
        "all; sending a part again replaces it."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def put_part(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: CurrentPrincipal,
    upload_id: uuid.UUID,
    number: int = Path(ge=1, le=1_000_000),
    content_sha256: str | None = Header(
        None, pattern="^[0-9a-fA-F]{64}$", examples=["9e2d4c...c1"], description="hex sha256"
    ),
    content_md5: str | None = Header(None, max_length=24, description="base64 MD5 (RFC 1864)"),
) -> PartOut:
    upload = await run_in_threadpool(service.get_upload, session, upload_id, principal.key_id)
    part: store.StoredPart = await service.put_part(
        settings, upload, number, request.stream(), sha256=content_sha256, md5=content_md5
    )
    await run_in_threadpool(service.touch, session, settings, upload)
    await run_in_threadpool(session.commit)
    return PartOut(number=part.number, size=part.size, sha256=part.sha256)


@router.post(
    "/{upload_id}/complete",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    responses=error_responses(404, 409, 413, 415, 422),
    summary="Ingest the uploaded archive as a dataset (201; 200 with the same dataset again)",
    dependencies=[require_scope("train")],
    description="409 `upload_incomplete` lists the parts still missing.",
)
def complete_upload(
    upload_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: CurrentPrincipal,
    response: Response,
) -> DatasetOut:
    upload = service.get_upload(session, upload_id, principal.key_id)
    with service.complete_upload(session, settings, upload) as (dataset, created):
        out = DatasetOut.model_validate(dataset)
        session.commit()
    if not created:
        response.status_code = status.HTTP_200_OK
    return out


@router.delete(
    "/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    summary="Abort an upload and delete its parts",
    dependencies=[require_scope("train")],
)
def abort_upload(
    upload_id: uuid.UUID, session: SessionDep, settings: SettingsDep, principal: CurrentPrincipal
) -> None:
    upload = service.get_upload(session, upload_id, principal.key_id)
    folder = service.abort_upload(session, settings, upload)
    session.commit()
    store.remove(folder)
