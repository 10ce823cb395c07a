from __future__ import annotations

import shutil
import uuid

from fastapi import APIRouter, File, Form, Query, UploadFile, status

from app.api.auth import require_scope
from app.api.deps import SessionDep, SettingsDep, ValidDataset
from app.api.schemas.common import Page, error_responses
from app.api.schemas.datasets import DatasetOut
from app.db.repositories import datasets as repo
from app.services import datasets as service

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    responses=error_responses(413, 415, 422),
    summary="Upload an image dataset",
    dependencies=[require_scope("train")],
    description=(
        "A .zip, .tar or .tar.gz with one folder per class, optionally under `train/` and "
        "`val/`. Every image is checked; bad files are skipped and listed in `report.rejected`. "
        "Unsafe archives (`..` or absolute paths, links, devices, archive bombs) are refused "
        "whole. Example: `curl -F file=@pets.zip -F name=pets localhost:8000/v1/datasets`"
    ),
)
def create_dataset(
    session: SessionDep,
    settings: SettingsDep,
    file: UploadFile = File(description="the archive"),
    name: str | None = Form(None, max_length=200, description="default: the file name"),
) -> DatasetOut:
    dataset = service.create_dataset(
        session, settings, file.file, filename=file.filename or "dataset", name=name
    )
    return DatasetOut.model_validate(dataset)


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
    offset: int = Query(0, ge=0),
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
