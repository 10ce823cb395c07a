"""Job queries, including the guarded state transitions the worker relies on."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Job, JobMetric, JobStatus
from app.db.repositories._paging import paginate


def get(session: Session, job_id: uuid.UUID) -> Job | None:
    return session.get(Job, job_id)


def list_(
    session: Session, *, status: str | None, limit: int, offset: int
) -> tuple[Sequence[Job], int]:
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    return paginate(session, query, order_by=Job.created_at.desc(), limit=limit, offset=offset)


def add(session: Session, job: Job) -> Job:
    session.add(job)
    session.flush()
    return job


def claim(session: Session, job_id: uuid.UUID) -> int | None:
    """queued -> running, only if still queued; the attempt number this worker now owns. A
    second delivery of the task gets None."""
    now = utcnow()
    attempt = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued.value)
        .values(
            status=JobStatus.running.value,
            started_at=func.coalesce(Job.started_at, now),
            heartbeat_at=now,
            attempts=Job.attempts + 1,
        )
        .returning(Job.attempts)
    )
    return int(attempt) if attempt is not None else None


def heartbeat(session: Session, job_id: uuid.UUID, attempt: int | None = None) -> bool:
    """Record that the job's worker is alive; return whether it should stop: a cancel was
    requested, or (with ``attempt``) the job is no longer this attempt's (its worker was taken
    for dead and the job restarted elsewhere)."""
    guard = [Job.id == job_id]
    if attempt is not None:
        guard += [Job.attempts == attempt, Job.status == JobStatus.running.value]
    flag = session.scalar(
        update(Job).where(*guard).values(heartbeat_at=utcnow()).returning(Job.cancel_requested)
    )
    return flag is None or bool(flag)


def stale(session: Session, older_than: datetime) -> Sequence[Job]:
    """running jobs whose heartbeat is older than ``older_than``: their worker is gone."""
    return session.scalars(
        select(Job).where(Job.status == JobStatus.running.value, Job.heartbeat_at < older_than)
    ).all()


def _stale_transition(session: Session, job: Job, older_than: datetime, **values: Any) -> bool:
    """Move a stale running job, only if it is still running, stale and on the same attempt:
    several workers reaping at once act on it once."""
    result = session.execute(
        update(Job)
        .where(
            Job.id == job.id,
            Job.status == JobStatus.running.value,
            Job.attempts == job.attempts,
            Job.heartbeat_at < older_than,
        )
        .values(**values)
        # No in-Python evaluation of the WHERE on loaded rows (SQLite gives naive datetimes).
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def requeue(session: Session, job: Job, older_than: datetime, reason: str) -> bool:
    """running (still stale, still the same attempt) -> queued, with the reason."""
    return _stale_transition(
        session,
        job,
        older_than,
        status=JobStatus.queued.value,
        restart_reason=reason,
        cancel_requested=False,
    )


def delete_metrics_after(session: Session, job_id: uuid.UUID, epoch: int) -> None:
    """Epochs past a checkpoint are trained again by the resumed run, which records them anew."""
    session.execute(delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.epoch > epoch))


def fail_stale(
    session: Session, job: Job, older_than: datetime, message: str, *, error_code: str
) -> bool:
    """running (still stale, still the same attempt) -> failed, with ``message``."""
    return _stale_transition(
        session,
        job,
        older_than,
        status=JobStatus.failed.value,
        error=message,
        error_code=error_code,
        finished_at=utcnow(),
    )


def finish(
    session: Session,
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    error: str | None = None,
    error_code: str | None = None,
    attempt: int | None = None,
) -> bool:
    """running -> a final status, only from running (a cancelled job stays cancelled) and, with
    ``attempt``, only by the worker that owns the job's current attempt."""
    guard = [Job.id == job_id, Job.status == JobStatus.running.value]
    if attempt is not None:
        guard.append(Job.attempts == attempt)
    result = session.execute(
        update(Job)
        .where(*guard)
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
    """Insert an epoch's metrics, replacing a row for that epoch from an earlier attempt."""
    session.execute(
        delete(JobMetric).where(JobMetric.job_id == metric.job_id, JobMetric.epoch == metric.epoch)
    )
    session.add(metric)
    session.flush()


def metrics(session: Session, job_id: uuid.UUID, after_epoch: int = 0) -> Sequence[JobMetric]:
    return session.scalars(
        select(JobMetric)
        .where(JobMetric.job_id == job_id, JobMetric.epoch > after_epoch)
        .order_by(JobMetric.epoch)
    ).all()
