from __future__ import annotations

import math
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.api.schemas.common import SLUG_PATTERN, ORMModel, UTCDateTime


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = Field(0.0, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    image_size: int | None = Field(
        None, ge=16, le=1024, description="square input size; default: the backbone's own"
    )
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="held out for validation when the dataset has no val/ split"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="stop after this many epochs without improvement and keep the best epoch",
    )
    early_stopping_metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    class_weighting: Literal["none", "balanced"] = Field(
        "none", description="balanced: loss weights n / (classes * n_class)"
    )
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="balanced: every class drawn equally often (with replacement)"
    )
    augmentation: Literal["auto", "default", "none", "light", "strong"] = Field(
        "auto",
        description="auto: timm's train transform for images and inputs of 128 px or more, "
        "else light (the job's model metrics say which); default: timm's train transform; "
        "none: eval transform; light: 60-100% random crop, no flips; strong: RandAugment. "
        "Not used where features are cached",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["constant", "cosine", "step"] = Field(
        "constant", description="per-epoch learning-rate schedule after warmup_epochs"
    )
    warmup_epochs: int = Field(0, ge=0, le=999, description="linear warm-up; < epochs")
    step_size: int = Field(10, ge=1, le=1000, description="scheduler 'step': epochs per decay")
    gamma: float = Field(0.1, gt=0, le=1, description="scheduler 'step': decay factor")
    grad_clip_norm: float | None = Field(None, gt=0, le=1e6, description="clip the gradient norm")
    amp: bool = Field(True, description="bfloat16 autocast on CUDA GPUs that support it")
    keep_best: bool = Field(
        True,
        description="return the epoch with the best early_stopping_metric on the validation "
        "split, not the last (also without early_stopping_patience)",
    )

    @model_validator(mode="after")
    def _warmup_within_epochs(self) -> Hyperparameters:
        if self.warmup_epochs >= self.epochs:
            raise ValueError("warmup_epochs must be less than epochs")
        return self


JOB_CREATE_EXAMPLE: dict[str, Any] = {
    "strategy": "finetune",
    "base_model": "timm:resnet18",
    "pretrained": True,
    "dataset_id": "3f8e4a52-3c1f-4f7b-9a53-2f0e2b7c9d11",
    "name": "pets",
    "options": {"freeze_stages": 1},
    "hyperparameters": {"epochs": 5, "batch_size": 32, "learning_rate": 0.001, "image_size": 64},
}


# Strategy options are small scalars or short lists of them (freeze_patterns): these caps bound
# what a job spec can store, and so what every GET /v1/jobs returns.
MAX_OPTIONS = 32
MAX_OPTION_STRING = 200
MAX_OPTION_LIST = 64


def _check_option_value(name: str, value: Any, *, in_list: bool = False) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        # abs() first: math.isfinite(10**400) raises OverflowError (a 500, not a 422).
        if abs(value) > 1e9 or not math.isfinite(value):
            raise ValueError(f"options.{name} must be a finite number of at most 1e9 in size")
        return
    if isinstance(value, str):
        if len(value) > MAX_OPTION_STRING or not value.isprintable():
            raise ValueError(
                f"options.{name} must be printable text of at most {MAX_OPTION_STRING} characters"
            )
        return
    if isinstance(value, list) and not in_list:
        if len(value) > MAX_OPTION_LIST:
            raise ValueError(f"options.{name} takes at most {MAX_OPTION_LIST} items")
        for item in value:
            _check_option_value(name, item, in_list=True)
        return
    raise ValueError(f"options.{name} must be a number, text, true/false, null or a flat list")


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={"examples": [JOB_CREATE_EXAMPLE]},
    )

    strategy: str = Field(
        description="GET /v1/strategies lists them", examples=["finetune"], max_length=64
    )
    base_model: str = Field(
        description="'timm:<name>' (GET /v1/backbones) or 'model:<model version id>'",
        examples=["timm:resnet18"],
        max_length=300,
    )
    pretrained: bool = Field(
        True, description="timm only: start from the published weights (false: from scratch)"
    )
    dataset_id: uuid.UUID
    name: str | None = Field(
        None,
        pattern=SLUG_PATTERN,
        max_length=100,
        description="model name to version under (letters, digits, '.', '_', '-'); default: the "
        "dataset's name",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="strategy options, e.g. {'freeze_stages': 2}",
        max_length=MAX_OPTIONS,
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=lambda: Hyperparameters.model_validate({})
    )

    @field_validator("options")
    @classmethod
    def _small_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        for name, value in options.items():
            if len(name) > 64:
                raise ValueError("option names are at most 64 characters")
            _check_option_value(name, value)
        return options


class Progress(BaseModel):
    epoch: int
    total_epochs: int
    step: int
    total_steps: int = Field(description="steps in the current epoch")
    fraction: float = Field(description="0..1 over the whole job")


JOB_EXAMPLE: dict[str, Any] = {
    "id": "5d0e6c1a-8f0b-4d3e-9a4c-1b2c3d4e5f60",
    "status": "running",
    "strategy": "finetune",
    "base_model": "timm:resnet18",
    "dataset_id": "3f8e4a52-3c1f-4f7b-9a53-2f0e2b7c9d11",
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
    },
    "error": None,
    "error_code": None,
    "cancel_requested": False,
    "attempts": 1,
    "restart_reason": None,
    "model_id": None,
    "created_at": "2026-11-29T10:00:00Z",
    "started_at": "2026-11-29T10:00:01Z",
    "finished_at": None,
    "duration_seconds": 75.2,
}


class JobOut(ORMModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: uuid.UUID
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    strategy: str
    base_model: str
    dataset_id: uuid.UUID | None
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
    created_at: UTCDateTime
    started_at: UTCDateTime | None
    finished_at: UTCDateTime | None
    duration_seconds: float | None = Field(None, description="running time so far or in total")


class EpochMetricsOut(ORMModel):
    epoch: int
    phase: str
    train_loss: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    images_per_second: float
    seconds: float


class JobMetricsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"job_id": JOB_EXAMPLE["id"], "epochs": [JOB_EXAMPLE["latest_metrics"]]}]
        }
    )

    job_id: uuid.UUID
    epochs: list[EpochMetricsOut]
