"""The job spec: what a client submits, validated once, and what the worker reads back.

One definition for the API (the request body of POST /v1/jobs) and the worker (which parses the
stored spec into these same types instead of reading dicts with restated defaults). The
hyperparameters are the engine's own model, ``app.engine.Hyperparameters``: the API, the worker
and the engine read one definition of their fields, defaults and bounds.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.engine.specs import Hyperparameters
from app.naming import SLUG_PATTERN

JOB_CREATE_EXAMPLE: dict[str, Any] = {
    "strategy": "finetune",
    "base_model": "timm:resnet18",
    "pretrained": True,
    "dataset_id": "3f8e4a52-3c1f-4f7b-9a53-2f0e2b7c9d11",
    "name": "pets",
    "options": {"freeze_stages": 1},
    "hyperparameters": {"epochs": 5, "batch_size": 32, "learning_rate": 0.001, "image_size": 64},
}

# Domain adaptation: a labelled source (dataset_id), unlabeled target images, a few labelled
# target images, and a labelled target set scored every epoch and at the end.
DANN_JOB_EXAMPLE: dict[str, Any] = {
    "strategy": "dann",
    "base_model": "timm:resnet18",
    "pretrained": True,
    "dataset_id": "3f8e4a52-3c1f-4f7b-9a53-2f0e2b7c9d11",
    "target_dataset_id": "7a41c6d0-52b8-4a0e-8f5c-0d9e1b2c3a44",
    "labeled_target_dataset_id": "c2d9e8f1-1b7a-4c3d-9e5f-6a7b8c9d0e12",
    "eval_dataset_id": "e5f60718-2a3b-4c5d-8e9f-0a1b2c3d4e5f",
    "name": "pets-to-sketches",
    "options": {"trade_off": 1.0, "lambda_schedule": "ganin"},
    "hyperparameters": {"epochs": 10, "batch_size": 32, "learning_rate": 0.001, "image_size": 64},
}

# The spec fields that name a dataset besides dataset_id (the job's columns of the same names).
EXTRA_DATASET_FIELDS = ("target_dataset_id", "labeled_target_dataset_id", "eval_dataset_id")


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
        json_schema_extra={"examples": [JOB_CREATE_EXAMPLE, DANN_JOB_EXAMPLE]},
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
    dataset_id: uuid.UUID = Field(description="the labelled (source) dataset the model learns")
    target_dataset_id: uuid.UUID | None = Field(
        None,
        description="domain adaptation: images of the domain the model will see (unlabeled, or "
        "labelled with its labels unused); required by the strategies that adapt (dann, "
        "instance_weighting: GET /v1/strategies says which), refused by the others",
        examples=[DANN_JOB_EXAMPLE["target_dataset_id"]],
    )
    labeled_target_dataset_id: uuid.UUID | None = Field(
        None,
        description="dann only: a labelled dataset of a few target-domain images that join the "
        "classification loss (semi-supervised adaptation) and the target pool; its classes must "
        "be among the source dataset's",
        examples=[DANN_JOB_EXAMPLE["labeled_target_dataset_id"]],
    )
    eval_dataset_id: uuid.UUID | None = Field(
        None,
        description="a labelled dataset (every split) scored every epoch (eval_loss, "
        "eval_accuracy in the job's metrics) and at the end (the model's metrics.eval); its "
        "classes must be among the source dataset's",
        examples=[DANN_JOB_EXAMPLE["eval_dataset_id"]],
    )
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
