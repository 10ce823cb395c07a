"""Dataset queries. Repositories only flush; the caller owns the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Dataset, Job
from app.db.models.job import ACTIVE_STATUSES
from app.db.repositories._paging import paginate


def get(session: Session, dataset_id: uuid.UUID) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def list_(session: Session, *, limit: int, offset: int) -> tuple[Sequence[Dataset], int]:
    order = Dataset.created_at.desc()
    return paginate(session, select(Dataset), order_by=order, limit=limit, offset=offset)


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
