from __future__ import annotations

import hashlib
import shutil
import uuid
from typing import BinaryIO

from fastapi import APIRouter, File, Form, Query, UploadFile, status
from fastapi.responses import JSONResponse

from app.api.auth import require_scope
from app.api.deps import CurrentPrincipal, IdempotencyKey, SessionDep, SettingsDep, ValidDataset
from app.api.idempotent import IdempotentCreate
from app.api.schemas.common import MAX_OFFSET, SLUG_PATTERN, Page, error_responses
from app.api.schemas.datasets import DatasetOut
from app.db.repositories import datasets as repo
from app.services import datasets as service
from app.storage.datasets import DATASET_KINDS, Dedupe

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    responses=error_responses(400, 409, 413, 415, 422),
    summary="Upload an image dataset",
    dependencies=[require_scope("train")],
    description=(
        "A .zip, .tar or .tar.gz with one folder per class, optionally under `train/` and "
        "`val/`; or with a `labels.csv` (`path,label[,split]`, paths relative to it) instead of "
        "class folders, refused with row-numbered errors (`manifest_invalid`) if a row is wrong. "
        "Every image is checked; bad files are skipped and listed in `report.rejected`. "
        "The report also holds exact and near duplicates (`report.duplicates`), validation "
        "images with a copy in train (`report.leakage`), size and mode histograms and class "
        "balance (`report.statistics`), and `report.warnings`. "
        "Unsafe archives (`..` or absolute paths, links, devices, archive bombs) are refused "
        "whole. With `kind=unlabeled` the archive holds images in any folder layout (folder "
        "names are not classes, nested folders are fine): a domain-adaptation target "
        "(`target_dataset_id` of a dann or instance_weighting job), checked and reported the "
        "same way, without classes or splits; it cannot be a job's `dataset_id`. "
        "Example: `curl -F file=@pets.zip -F name=pets localhost:8000/v1/datasets`"
    ),
)
def create_dataset(
    session: SessionDep,
    settings: SettingsDep,
    principal: CurrentPrincipal,
    file: UploadFile = File(description="the archive"),
    name: str | None = Form(
        None,
        pattern=SLUG_PATTERN,
        max_length=100,
        description="letters, digits, '.', '_', '-'; default: made from the file's name",
    ),
    dedupe: Dedupe = Form(
        "none",
        description="drop copies within each split and class, keeping one of each group: "
        "`exact` (same bytes) or `near` (perceptual hash, also catches resized, re-encoded and "
        "border-cropped copies). Copies across classes or across train/val are never dropped, "
        "only reported (`report.duplicates`, `report.leakage`).",
        examples=["near"],
    ),
    kind: str = Form(
        "labelled",
        max_length=32,
        description="`labelled` (class folders or labels.csv) or `unlabeled` (images in any "
        "folder layout, no classes: a domain-adaptation target); other values are 422 "
        "`invalid_dataset_kind`",
        examples=["unlabeled"],
        json_schema_extra={"enum": list(DATASET_KINDS)},
    ),
    idempotency_key: IdempotencyKey = None,
) -> DatasetOut | JSONResponse:
    dataset_kind = service.check_kind(kind)
    idem = IdempotentCreate(
        session,
        principal=principal,
        endpoint="create_dataset",
        key=idempotency_key,
        # Only read when a key was sent: one extra pass over the spooled upload.
        # dedupe only when set, so keys stored before the option existed still match.
        request=[(name or "").encode(), _sha256(file.file).encode()]
        + ([dedupe.encode()] if dedupe != "none" else [])
        # The kind as understood ("labeled" is "labelled"), so spellings of one request match.
        + ([str(dataset_kind).encode()] if dataset_kind != "labelled" else [])
        if idempotency_key
        else [],
        ttl_s=settings.idempotency_ttl_s,
    )
    if replayed := idem.replayed():
        return replayed
    with service.ingest_dataset(
        session, settings, file.file, filename=file.filename or "dataset", name=name,
        dedupe=dedupe, kind=dataset_kind,
    ) as ingest:  # fmt: skip
        out = DatasetOut.model_validate(ingest.dataset)
        if lost_race := idem.remember(status.HTTP_201_CREATED, out):
            ingest.discard()
            return lost_race
        session.commit()
    return out


def _sha256(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


@router.get(
    "",
    response_model=Page[DatasetOut],
    responses=error_responses(422),
    summary="List datasets, newest first",
    dependencies=[require_scope("read")],
)
def list_datasets(
    session: SessionDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> Page[DatasetOut]:
    rows, total = repo.list_(session, limit=limit, offset=offset)
    items = [DatasetOut.model_validate(r) for r in rows]
    return Page[DatasetOut](items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/{dataset_id}",
    response_model=DatasetOut,
    responses=error_responses(404),
    summary="A dataset",
    dependencies=[require_scope("read")],
)
def get_dataset(dataset: ValidDataset) -> DatasetOut:
    return DatasetOut.model_validate(dataset)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
    summary="Delete a dataset and its files (409 while a queued or running job uses it)",
    dependencies=[require_scope("train")],
)
def delete_dataset(dataset_id: uuid.UUID, session: SessionDep, settings: SettingsDep) -> None:
    folder = service.delete_dataset(session, settings, dataset_id)
    session.commit()
    shutil.rmtree(folder, ignore_errors=True)
