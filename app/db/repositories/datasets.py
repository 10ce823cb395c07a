"""Dataset queries. Repositories only flush; the caller owns the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import or_, select, update
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


# The job columns that name a dataset, by the role the API calls it.
JOB_DATASET_ROLES = {
    "dataset_id": Job.dataset_id,
    "target_dataset_id": Job.target_dataset_id,
    "labeled_target_dataset_id": Job.labeled_target_dataset_id,
    "eval_dataset_id": Job.eval_dataset_id,
}


def lock_for_delete(session: Session, dataset_id: uuid.UUID) -> None:
    """Hold the dataset's row against new jobs until this transaction ends, so that checking
    who uses it and deleting it are one step: a job inserted meanwhile waits, then fails its
    foreign key (the service answers 404), and one inserted before is seen by the check.
    Postgres: FOR UPDATE conflicts with the key-share lock a job's foreign key takes. SQLite:
    the no-op UPDATE takes the database's write lock, which a job's insert needs too."""
    session.execute(select(Dataset.id).where(Dataset.id == dataset_id).with_for_update())
    session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id)
        .values(name=Dataset.name)
        .execution_options(synchronize_session=False)
    )


def active_job_roles(session: Session, dataset_id: uuid.UUID) -> dict[uuid.UUID, list[str]]:
    """Queued or running jobs that use the dataset in any role: {job id: [roles]}."""
    columns = list(JOB_DATASET_ROLES.values())
    rows = session.execute(
        select(Job.id, *columns).where(
            or_(*(column == dataset_id for column in columns)),
            Job.status.in_(ACTIVE_STATUSES),
        )
    ).all()
    roles = list(JOB_DATASET_ROLES)
    return {
        row[0]: [role for role, value in zip(roles, row[1:], strict=True) if value == dataset_id]
        for row in rows
    }


def delete(session: Session, dataset: Dataset) -> None:
    session.delete(dataset)
    session.flush()
