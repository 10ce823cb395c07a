from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from app.db.models import Dataset
from app.db.repositories import datasets as repo
from app.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from app.naming import slugify
from app.settings import Settings
from app.storage.datasets import (
    DATASET_KINDS,
    LABELLED,
    UNLABELED,
    DatasetKind,
    Dedupe,
    IngestLimits,
    ingest_archive,
)
from app.storage.sweep import ingest_lock

CHUNK = 1 << 20


class DatasetNotFound(NotFound):
    code = "dataset_not_found"


class DatasetInUse(Conflict):
    code = "dataset_in_use"


def check_kind(kind: str) -> DatasetKind:
    """A dataset kind as a client sent it: labelled or unlabeled, else 422 invalid_dataset_kind.
    "labeled" is taken for "labelled": the job fields spell it so (labeled_target_dataset_id)."""
    if kind == "labeled":
        kind = LABELLED
    if kind not in DATASET_KINDS:
        raise InvalidInput(
            f"kind must be one of {', '.join(DATASET_KINDS)} (got {kind[:50]!r}): 'labelled' "
            "for class folders or labels.csv, 'unlabeled' for images in any folder layout",
            code="invalid_dataset_kind",
            details={"field": "kind", "choices": list(DATASET_KINDS)},
        )
    return LABELLED if kind == LABELLED else UNLABELED


def ingest_limits(settings: Settings) -> IngestLimits:
    return IngestLimits(
        max_entries=settings.max_archive_entries,
        max_total_bytes=settings.max_extracted_bytes,
        max_ratio=settings.max_compression_ratio,
        max_image_pixels=settings.max_image_pixels,
    )


def get_dataset(session: Session, dataset_id: uuid.UUID) -> Dataset:
    dataset = repo.get(session, dataset_id)
    if dataset is None:
        raise DatasetNotFound(f"dataset {dataset_id} does not exist")
    return dataset


def _spool(source: BinaryIO, dest: Path, max_bytes: int) -> int:
    """Copy the upload to our own temp file in 1 MiB chunks, never holding it whole in memory."""
    written = 0
    with dest.open("wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise PayloadTooLarge(
                    f"the upload is larger than the limit of {max_bytes} bytes; split the "
                    "dataset or raise TRANSFERLAB_MAX_UPLOAD_BYTES",
                    code="upload_too_large",
                    details={"limit_bytes": max_bytes},
                )
            out.write(chunk)
    return written


@dataclass
class Ingest:
    """An ingested dataset whose row is flushed but not yet committed."""

    dataset: Dataset
    folder: Path

    def discard(self) -> None:
        """Remove the folder: the row will not be committed (e.g. an idempotency race lost)."""
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def ingest_dataset(
    session: Session,
    settings: Settings,
    source: BinaryIO | Path,
    *,
    filename: str,
    name: str | None,
    dedupe: Dedupe = "none",
    kind: DatasetKind = LABELLED,
) -> Iterator[Ingest]:
    """Ingest an upload and yield it; the caller commits the row inside the ``with`` block.

    The block runs under ``app.storage.sweep.ingest_lock``: until the commit the folder has no
    row, and a sweep starting in another API process must see it as in use. If the block raises
    (a failed commit, a conflict), the folder is removed; nothing stays on disk without a row.
    ``source`` is a stream to spool, or a finished upload file that is moved (and consumed).
    """
    dataset_id = uuid.uuid4()
    with ingest_lock(settings.layout.ensure(), dataset_id):
        dataset = create_dataset(
            session, settings, source, dataset_id=dataset_id, filename=filename, name=name,
            dedupe=dedupe, kind=kind,
        )  # fmt: skip
        ingest = Ingest(dataset, settings.layout.dataset_dir(dataset_id))
        try:
            yield ingest
        except BaseException:
            ingest.discard()
            raise


def create_dataset(
    session: Session,
    settings: Settings,
    source: BinaryIO | Path,
    *,
    dataset_id: uuid.UUID,
    filename: str,
    name: str | None,
    dedupe: Dedupe = "none",
    kind: DatasetKind = LABELLED,
) -> Dataset:
    """Spool, extract safely, validate, then insert. On any failure nothing stays on disk.

    The caller holds ``app.storage.sweep.ingest_lock(dataset_id)`` until the insert is committed
    (``ingest_dataset`` does), so that a start-up sweep in another process never takes the
    folder for a crash's leftover.
    """
    layout = settings.layout.ensure()
    dest = layout.dataset_dir(dataset_id)
    tmp = layout.upload_path(dataset_id)
    try:
        if isinstance(source, Path):
            source.rename(tmp)  # same filesystem (both under tmp/): no copy
        else:
            _spool(source, tmp, settings.max_upload_bytes)
        report = ingest_archive(tmp, dest, ingest_limits(settings), dedupe=dedupe, kind=kind)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        return repo.add(
            session,
            Dataset(
                id=dataset_id,
                name=name or slugify(_stem(filename)),
                sha256=report.sha256,
                format=report.format,
                kind=kind,
                num_classes=len(report.classes),
                num_images=report.num_images,
                size_bytes=report.total_bytes,
                report=report.to_dict(),
            ),
        )
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def job_warnings(dataset: Dataset) -> list[dict[str, Any]]:
    """What a job trained on this dataset must say about its data (from the ingest report)."""
    leakage = (dataset.report or {}).get("leakage") or {}
    leaked = int(leakage.get("val_images") or 0)
    if not leaked:
        return []
    return [
        {
            "code": "val_leakage",
            "message": f"{leaked} of {leakage.get('val_total')} validation images "
            f"({float(leakage.get('fraction') or 0):.1%}) have an exact or near copy in the "
            "training set, so validation metrics are optimistic; remove them from val/ (or "
            f"train/) and upload again (dataset {dataset.id} report.leakage lists them)",
            "val_images": leaked,
            "fraction": leakage.get("fraction"),
        }
    ]


def delete_dataset(session: Session, settings: Settings, dataset_id: uuid.UUID) -> Path:
    """Delete the row; return the folder, which the caller removes once the delete committed."""
    dataset = get_dataset(session, dataset_id)
    repo.lock_for_delete(session, dataset_id)
    active = repo.active_job_roles(session, dataset_id)
    if active:
        roles = sorted({role for job_roles in active.values() for role in job_roles})
        raise DatasetInUse(
            f"dataset {dataset_id} is used by {len(active)} queued or running job(s) (as "
            f"{', '.join(roles)}); cancel them or wait until they finish",
            details={
                "job_ids": [str(j) for j in active],
                "roles": {str(j): job_roles for j, job_roles in active.items()},
            },
        )
    repo.delete(session, dataset)
    # Files go only after the commit: a crash in between leaves an orphan folder (harmless, no
    # row points to it) rather than a row whose files are gone.
    return settings.layout.dataset_dir(dataset_id)


def _stem(filename: str) -> str:
    name = Path(filename or "dataset").name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "dataset"
    return name or "dataset"
