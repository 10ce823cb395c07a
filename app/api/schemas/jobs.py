from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.schemas.common import ORMModel, UTCDateTime, as_utc
from app.db.models import Job
from app.jobspec import JOB_CREATE_EXAMPLE, Hyperparameters, JobCreate
from app.services.job_kinds import kind_of

__all__ = ["Hyperparameters", "JobCreate"]  # defined in app.jobspec, shared with the worker


class Progress(BaseModel):
    epoch: int
    total_epochs: int
    step: int
    total_steps: int = Field(description="steps in the current epoch")
    fraction: float = Field(description="0..1 over the whole job")


JOB_EXAMPLE: dict[str, Any] = {
    "id": "5d0e6c1a-8f0b-4d3e-9a4c-1b2c3d4e5f60",
    "status": "running",
    "kind": "train",
    "strategy": "finetune",
    "base_model": "timm:resnet18",
    "dataset_id": "3f8e4a52-3c1f-4f7b-9a53-2f0e2b7c9d11",
    "target_dataset_id": None,
    "labeled_target_dataset_id": None,
    "eval_dataset_id": None,
    "spec": JOB_CREATE_EXAMPLE,
    "progress": {"epoch": 3, "total_epochs": 5, "step": 40, "total_steps": 120, "fraction": 0.4667},
    "latest_metrics": {
        "epoch": 2,
        "phase": "train",
        "train_loss": 0.41,
        "val_loss": 0.38,
        "val_accuracy": 0.88,
        "learning_rate": 0.001,
        "images_per_second": 412.0,
        "seconds": 31.5,
        "extra": {},
        "eval_loss": None,
        "eval_accuracy": None,
    },
    "error": None,
    "error_code": None,
    "cancel_requested": False,
    "attempts": 1,
    "restart_reason": None,
    "model_id": None,
    "warnings": [
        {
            "code": "val_leakage",
            "message": "12 of 200 validation images (6.0%) have an exact or near copy in the "
            "training set, so validation metrics are optimistic; ...",
            "val_images": 12,
            "fraction": 0.06,
        }
    ],
    "created_at": "2026-11-29T10:00:00Z",
    "started_at": "2026-11-29T10:00:01Z",
    "finished_at": None,
    "duration_seconds": 75.2,
}


class JobOut(ORMModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: uuid.UUID
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    kind: str = Field(
        "train", description="train (a transfer strategy; makes a model) or extract_features"
    )
    strategy: str
    base_model: str
    dataset_id: uuid.UUID | None
    target_dataset_id: uuid.UUID | None = Field(
        None, description="domain adaptation: the target domain's images (dann and others)"
    )
    labeled_target_dataset_id: uuid.UUID | None = Field(
        None, description="dann: labelled target images in the classification loss"
    )
    eval_dataset_id: uuid.UUID | None = Field(
        None, description="a labelled set scored every epoch (eval_loss, eval_accuracy)"
    )
    spec: dict[str, Any]
    progress: Progress
    latest_metrics: dict[str, Any] | None
    error: str | None
    error_code: str | None = Field(
        None,
        description="why a failed job failed, stable and safe to branch on: invalid_spec, "
        "dataset_missing, dataset_corrupt, base_model_missing, pretrained_weights_unavailable, "
        "worker_lost, broker_unavailable, internal_error",
    )
    cancel_requested: bool
    attempts: int = Field(
        0, description="how many times a worker started the job (more than 1: it was resumed)"
    )
    restart_reason: str | None = Field(
        None, description="why the job was last put back in the queue, if it was"
    )
    model_id: uuid.UUID | None = Field(None, description="the model version this job produced")
    warnings: list[dict[str, Any]] = Field(
        default_factory=list,
        description="what to know about the job's data, fixed when it was created: "
        "`val_leakage` when validation images have copies in train (metrics are optimistic)",
    )
    created_at: UTCDateTime
    started_at: UTCDateTime | None
    finished_at: UTCDateTime | None
    duration_seconds: float | None = Field(None, description="running time so far or in total")

    @classmethod
    def from_job(cls, job: Job, model_id: uuid.UUID | None) -> JobOut:
        """The view of a job row: progress as a fraction of the whole job, the running time."""
        steps = max(job.total_steps, 1)
        done_epochs = max(job.epoch - 1, 0) + (job.step / steps if job.epoch else 0)
        fraction = min(done_epochs / job.total_epochs, 1.0) if job.total_epochs else 0.0
        if job.status == "succeeded":
            fraction = 1.0
        end = job.finished_at or (datetime.now(timezone.utc) if job.started_at else None)
        duration = None
        if job.started_at and end:
            duration = (as_utc(end) - as_utc(job.started_at)).total_seconds()
        return cls(
            id=job.id,
            status=job.status,  # type: ignore[arg-type]
            kind=kind.name if (kind := kind_of(job.strategy)) else "unknown",
            strategy=job.strategy,
            base_model=job.base_model,
            dataset_id=job.dataset_id,
            target_dataset_id=job.target_dataset_id,
            labeled_target_dataset_id=job.labeled_target_dataset_id,
            eval_dataset_id=job.eval_dataset_id,
            spec=job.spec,
            progress=Progress(
                epoch=job.epoch,
                total_epochs=job.total_epochs,
                step=job.step,
                total_steps=job.total_steps,
                fraction=round(fraction, 4),
            ),
            latest_metrics=job.latest_metrics,
            error=job.error,
            error_code=job.error_code,
            cancel_requested=job.cancel_requested,
            attempts=job.attempts,
            restart_reason=job.restart_reason,
            model_id=model_id,
            warnings=job.warnings or [],
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            duration_seconds=duration,
        )


class EpochMetricsOut(ORMModel):
    epoch: int
    phase: str
    train_loss: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    images_per_second: float
    seconds: float
    eval_loss: float | None = Field(
        None, description="on the job's eval dataset (eval_dataset_id); null without one"
    )
    eval_accuracy: float | None = Field(
        None, description="on the job's eval dataset (eval_dataset_id); null without one"
    )
    extra: dict[str, float] = Field(
        default_factory=dict,
        description="the strategy's own figures, means over the epoch: dann's domain_accuracy "
        "(the domain discriminator's, near 0.5 once the features no longer tell source from "
        "target), domain_loss and classification_loss",
    )

    @field_validator("extra", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value  # epochs recorded before migration 0008


DANN_EPOCH_EXAMPLE: dict[str, Any] = {
    **JOB_EXAMPLE["latest_metrics"],
    "phase": "train",
    "eval_loss": 0.92,
    "eval_accuracy": 0.71,
    "extra": {"domain_accuracy": 0.58, "domain_loss": 0.68, "classification_loss": 0.35},
}


class JobMetricsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": JOB_EXAMPLE["id"],
                    "epochs": [DANN_EPOCH_EXAMPLE],
                    "warnings": JOB_EXAMPLE["warnings"],
                }
            ]
        }
    )

    job_id: uuid.UUID
    epochs: list[EpochMetricsOut]
    warnings: list[dict[str, Any]] = Field(
        default_factory=list,
        description="as on the job: `val_leakage` means val_accuracy is measured partly on "
        "images the model trained on",
    )
