"""Dataset queries. Repositories only flush; the caller owns the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Dataset, Job
from app.db.models.job import ACTIVE_STATUSES


def get(session: Session, dataset_id: uuid.UUID) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def list_(session: Session, *, limit: int, offset: int) -> tuple[Sequence[Dataset], int]:
    total = session.scalar(select(func.count()).select_from(Dataset)) or 0
    rows = session.scalars(
        select(Dataset).order_by(Dataset.created_at.desc()).limit(limit).offset(offset)
    ).all()
    return rows, total


def add(session: Session, dataset: Dataset) -> Dataset:
    session.add(dataset)
    session.flush()
    return dataset


def active_job_ids(session: Session, dataset_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        session.scalars(
            select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE_STATUSES))
        )
    )


def delete(session: Session, dataset: Dataset) -> None:
    session.delete(dataset)
    session.flush()
