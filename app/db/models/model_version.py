from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, new_id, utcnow


class ModelVersion(Base):
    """A trained model: exactly one per succeeded job, numbered per model name."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # unique: a redelivered task can never register a second version for the same job.
    job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), unique=True
    )
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL")
    )
    parent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    base_model: Mapped[str] = mapped_column(String(300))
    strategy: Mapped[str] = mapped_column(String(64))
    class_names: Mapped[list[str]] = mapped_column(JSON)
    # accuracy, per-class accuracy, confusion matrix on the validation split
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    # base model, dataset sha256, job spec, library versions
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Where the weights and card are, as a key for app.storage.artifacts ("models/<id>"): the
    # database holds no paths, so the data folder can move and a store can replace it.
    artifact_key: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Archived versions are left out of lists unless asked for; they still resolve and predict
    # (archiving tidies a list, deleting stops serving), so cached resolutions never go stale.
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
