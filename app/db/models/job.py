from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, new_id, utcnow


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_STATUSES = (JobStatus.queued.value, JobStatus.running.value)


class Job(Base):
    """One training run. State lives here, not in a Celery result backend."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    # Plain string rather than a DB enum: adding a status later needs no ALTER TYPE on Postgres.
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value, index=True)
    strategy: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(300))
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True
    )
    # Domain adaptation (migration 0008): the target domain's images (dann,
    # instance_weighting), a few labelled target images (dann), and a labelled set scored every
    # epoch. Like dataset_id they outlive their dataset as NULL; a dataset in any of these roles
    # of a queued or running job cannot be deleted.
    target_dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True, default=None
    )
    labeled_target_dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True, default=None
    )
    eval_dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), index=True, default=None
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    epoch: Mapped[int] = mapped_column(Integer, default=0)
    total_epochs: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    latest_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # A stable, machine-readable reason beside the message of a failed job (worker_lost,
    # invalid_spec, dataset_missing, internal_error, ...): safe to branch on, like API error codes.
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # Written by the running worker about once a second; a running job whose heartbeat stopped
    # belongs to a worker that died, and is failed by the next worker that starts.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # How many times a worker has started this job; a job whose worker died goes back to the
    # queue (and resumes from its last checkpoint) until it has used TRANSFERLAB_MAX_JOB_ATTEMPTS.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    restart_reason: Mapped[str | None] = mapped_column(Text, default=None)
    # Fixed when the job is created, from its dataset's report: [{code, message, ...}], e.g.
    # val_leakage when validation images have copies in train (migration 0007).
    warnings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
