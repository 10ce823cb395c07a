"""Job queries, including the guarded state transitions the worker relies on."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Job, JobMetric, JobStatus


def get(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id)


def list_(
    session: Session, *, status: str | None, limit: int, offset: int
) -> tuple[Sequence[Job], int]:
    query = select(Job)
    count = select(func.count()).select_from(Job)
    if status is not None:
        query = query.where(Job.status == status)
        count = count.where(Job.status == status)
    rows = session.scalars(query.order_by(Job.created_at.desc()).limit(limit).offset(offset)).all()
    return rows, session.scalar(count) or 0


def add(session: Session, job: Job) -> Job:
    session.add(job)
    session.flush()
    return job


def claim(session: Session, job_id: uuid.UUID) -> bool:
    """queued -> running, only if still queued. A second delivery of the task gets False."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(status=JobStatus.running.value, started_at=utcnow(), heartbeat_at=utcnow())
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def heartbeat(session: Session, job_id: uuid.UUID) -> bool:
    """Record that the job's worker is alive; return whether a cancel was requested."""
    flag = session.scalar(
        update(Job)
        .where(Job.id == job_id)
        .values(heartbeat_at=utcnow())
        .returning(Job.cancel_requested)
    )
    return bool(flag)


def fail_stale(
    session: Session, older_than: datetime, message: str, *, error_code: str | None = None
) -> list[uuid.UUID]:
    """running jobs whose heartbeat is older than ``older_than`` -> failed, with ``message``."""
    stale = list(
        session.scalars(
            select(Job.id).where(
                Job.status == JobStatus.running.value, Job.heartbeat_at < older_than
            )
        )
    )
    if stale:
        # The status guard again: a job that finished in the meantime keeps its real outcome.
        session.execute(
            update(Job)
            .where(Job.id.in_(stale), Job.status == JobStatus.running.value)
            .values(
                status=JobStatus.failed.value,
                error=message,
                error_code=error_code,
                finished_at=utcnow(),
            )
        )
    return stale


def finish(
    session: Session,
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    error: str | None = None,
    error_code: str | None = None,
) -> bool:
    """running -> a final status, only from running (a cancelled job stays cancelled)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running.value)
        .values(status=status.value, error=error, error_code=error_code, finished_at=utcnow())
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def cancel_queued(session: Session, job_id: uuid.UUID) -> bool:
    """queued -> cancelled at once: no worker has it yet, so nobody else needs to know."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(status=JobStatus.cancelled.value, cancel_requested=True, finished_at=utcnow())
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def request_cancel(session: Session, job_id: uuid.UUID) -> bool:
    """Flag a running job; its worker stops at the next step boundary."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running.value)
        .values(cancel_requested=True)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def set_progress(session: Session, job_id: uuid.UUID, **values: Any) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(**values))


def add_metric(session: Session, metric: JobMetric) -> None:
    session.add(metric)
    session.flush()


def metrics(session: Session, job_id: uuid.UUID) -> Sequence[JobMetric]:
    return session.scalars(
        select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.epoch)
    ).all()
