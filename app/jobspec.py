"""The job spec: what a client submits, validated once, and what the worker reads back.

One definition for the API (the request body of POST /v1/jobs) and the worker (which parses the
stored spec into these same types instead of reading dicts with restated defaults). The engine's
own ``Hyperparameters`` dataclass mirrors the fields (tests/api/test_hyperparameters_schema.py):
the engine stays a library without pydantic.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.naming import SLUG_PATTERN


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

    @property
    def source(self) -> BaseModelRef:
        return parse_base_model(self.base_model)


@dataclass(frozen=True)
class BaseModelRef:
    """``timm:<name>`` or ``model:<version id>``, parsed once (kind "invalid" when neither)."""

    kind: str  # "timm" | "model" | "invalid"
    name: str = ""  # the timm name
    model_id: uuid.UUID | None = None


def parse_base_model(text: str) -> BaseModelRef:
    kind, _, name = text.partition(":")
    if kind == "timm" and name:
        return BaseModelRef("timm", name=name)
    if kind == "model" and name:
        try:
            return BaseModelRef("model", model_id=uuid.UUID(name))
        except ValueError:
            pass
    return BaseModelRef("invalid")
