"""Model version queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.models import ModelName, ModelTag, ModelVersion
from app.db.repositories._paging import paginate


def get(session: Session, model_id: uuid.UUID) -> ModelVersion | None:
    return session.get(ModelVersion, model_id)


def get_by_job(session: Session, job_id: uuid.UUID) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id))


def ids_by_job(session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """{job id: model version id} for those of ``job_ids`` that produced a model, in one query."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(ModelVersion.job_id, ModelVersion.id).where(ModelVersion.job_id.in_(job_ids))
    )
    return {job_id: model_id for job_id, model_id in rows if job_id is not None}


def get_by_version(session: Session, name: str, version: int) -> ModelVersion | None:
    return session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )


def list_(
    session: Session,
    *,
    name: str | None,
    limit: int,
    offset: int,
    tag: str | None = None,
    include_archived: bool = False,
) -> tuple[Sequence[ModelVersion], int]:
    query = select(ModelVersion)
    if name is not None:
        query = query.where(ModelVersion.name == name)
    if tag is not None:
        tagged = select(ModelTag.model_id).where(ModelTag.tag == tag)
        query = query.where(ModelVersion.id.in_(tagged))
    if not include_archived:
        query = query.where(ModelVersion.archived_at.is_(None))
    order = ModelVersion.created_at.desc()
    return paginate(session, query, order_by=order, limit=limit, offset=offset)


def next_version(session: Session, name: str) -> int:
    """Hand out the next version number under ``name``: never one given before, even when that
    version was deleted (model_names keeps the last one). Two transactions making the first
    version of a new name at once collide on model_names' key: IntegrityError, which the caller
    retries (as it does for a taken (name, version))."""
    taken = session.scalar(
        update(ModelName)
        .where(ModelName.name == name)
        .values(last_version=ModelName.last_version + 1)
        .returning(ModelName.last_version)
        .execution_options(synchronize_session=False)
    )
    if taken is not None:
        return int(taken)
    current = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.name == name)
    )
    session.add(ModelName(name=name, last_version=(current or 0) + 1))
    session.flush()
    return (current or 0) + 1


def add(session: Session, model: ModelVersion) -> ModelVersion:
    session.add(model)
    session.flush()
    return model


def delete(session: Session, model: ModelVersion) -> None:
    session.delete(model)
    session.flush()
