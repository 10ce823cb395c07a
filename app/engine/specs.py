"""Frozen inputs and plain outputs of the engine.

The worker builds these from database rows; the engine never reads the environment. Inputs
validate themselves on construction so a bad job fails before any model is built, with an
``EngineError`` message that can be shown to the user as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.engine.errors import EngineError
from app.engine.heads import check_probe_architecture, is_probed

SOURCE_KINDS = ("timm", "artifact")
# A cap on batch_size x image_size^2: 2^26 pixels is a batch of 256 at 512 px or 1,365 at 224 px,
# whose fp32 input alone is 0.8 GB and a ResNet-50's training activations some 30 times that.
# Larger batches cannot fit a worker; refusing them at submit time beats an out-of-memory kill.
MAX_BATCH_PIXELS = 2**26


def _is_int(value: object) -> bool:
    # bool is an int subclass; "epochs": true is a client bug, not 1 epoch.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_batch_memory(batch_size: int, image_size: int) -> list[str]:
    """Problems with a batch too large for any worker (see MAX_BATCH_PIXELS)."""
    pixels = batch_size * image_size * image_size
    if pixels <= MAX_BATCH_PIXELS:
        return []
    gib = pixels * 3 * 4 / 2**30
    return [
        f"batch_size {batch_size} at image_size {image_size} is {gib:.1f} GiB of input per "
        f"batch before any activation; keep batch_size x image_size^2 at most {MAX_BATCH_PIXELS} "
        f"(e.g. batch_size {max(1, MAX_BATCH_PIXELS // (image_size * image_size))})"
    ]


def _strict_int(default: int | None, **bounds: Any) -> Any:
    # strict: "epochs": true is a client bug, not 1 epoch, and 3.0 is not an integer.
    return Field(default, strict=True, **bounds)


class Hyperparameters(BaseModel):
    """Job-wide training settings; every strategy honours them (exceptions noted per field).

    The one definition: the API takes this model as the ``hyperparameters`` of a job (its bounds
    and descriptions are the OpenAPI schema's), the worker gets it back parsed from the stored
    spec, and the engine reads it. A bad value raises pydantic's ``ValidationError`` naming the
    field (the API answers it as a 422 ``validation_error``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    epochs: int = _strict_int(10, ge=1, le=1000)
    batch_size: int = _strict_int(32, ge=1, le=4096)
    learning_rate: float = Field(1e-3, gt=0, le=10)
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="sgd uses momentum")
    weight_decay: float = Field(0.0, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    image_size: int | None = _strict_int(
        None, ge=16, le=1024, description="square input size; default: the backbone's own"
    )
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="held out for validation when the dataset has no val/ split"
    )
    seed: int = _strict_int(0, ge=0, le=2**31 - 1)
    # Stop after this many epochs without improvement of early_stopping_metric and return the
    # model of the best epoch (its weights, BatchNorm statistics and evaluation). None: train all
    # epochs.
    early_stopping_patience: int | None = _strict_int(
        None,
        ge=1,
        le=1000,
        description="stop after this many epochs without improvement and keep the best epoch",
    )
    early_stopping_metric: Literal["val_loss", "val_accuracy"] = Field(
        "val_loss", description="val_loss: lower is better; val_accuracy: higher is better"
    )
    # "balanced": cross-entropy weights n / (classes * n_c) from the training split, as
    # scikit-learn's class_weight="balanced". train_loss is then the weighted loss; val_loss
    # stays the plain cross-entropy so that it compares across jobs.
    class_weighting: Literal["none", "balanced"] = Field(
        "none", description="balanced: loss weights n / (classes * n_class)"
    )
    # "balanced": each epoch draws len(train) samples with replacement, every class equally
    # likely. Seeded like shuffling.
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="balanced: every class drawn equally often (with replacement)"
    )
    # Training transform (ignored where features are cached: linear_probe, lp_ft's probe).
    # "auto" picks timm's ImageNet policy only where it fits: photos of at least AUTO_MIN_SIDE
    # pixels for an input of at least that size; "light" otherwise (its RandomResizedCrop down to
    # 8% of the area destroys small images: a 6-epoch digits finetune at 32 px reached 0.605 with
    # it and 0.915 with "light"). TrainResult.choices says which.
    augmentation: Literal["auto", "default", "none", "light", "strong"] = Field(
        "auto",
        description="auto: timm's train transform for images and inputs of 128 px or more, "
        "else light (the job's model metrics say which); default: timm's train transform; "
        "none: eval transform; light: 60-100% random crop, no flips; strong: RandAugment. "
        "Not used where features are cached",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # The learning rate is set once per epoch (EpochMetrics.learning_rate is the one used): warm-up
    # epochs ramp linearly, lr * e / (warmup_epochs + 1) in epoch e, then "cosine" anneals towards
    # 0 over the remaining epochs (never reaching it in a trained epoch) and "step" multiplies by
    # gamma every step_size epochs. A job with two phases (lp_ft) runs the schedule in each.
    scheduler: Literal["constant", "cosine", "step"] = Field(
        "constant", description="per-epoch learning-rate schedule after warmup_epochs"
    )
    warmup_epochs: int = _strict_int(0, ge=0, le=999, description="linear warm-up; < epochs")
    step_size: int = _strict_int(
        10, ge=1, le=1000, description="scheduler 'step': epochs per decay"
    )
    gamma: float = Field(0.1, gt=0, le=1, description="scheduler 'step': decay factor")
    grad_clip_norm: float | None = Field(None, gt=0, le=1e6, description="clip the gradient norm")
    # CPU runs are always fp32: CPU autocast is slower for most backbones.
    amp: bool = Field(
        True, strict=True, description="bfloat16 autocast on CUDA GPUs that support it"
    )
    keep_best: bool = Field(
        True,
        strict=True,
        description="return the epoch with the best early_stopping_metric on the validation "
        "split, not the last (also without early_stopping_patience)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Hyperparameters:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs must be less than epochs (got {self.warmup_epochs} of "
                f"{self.epochs}): the learning rate would never reach its value"
            )
        if self.image_size is not None and (problems := check_batch_memory(
            self.batch_size, self.image_size
        )):  # fmt: skip
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "timm" | "artifact"
    name: str = ""  # timm model name when kind == "timm"
    pretrained: bool = True  # timm only
    artifact_dir: Path | None = None  # kind == "artifact": a directory written by save_artifact()

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise EngineError(
                f"Unknown model source kind {self.kind!r}; "
                f"expected one of {', '.join(SOURCE_KINDS)}."
            )
        if self.kind == "timm" and not self.name:
            raise EngineError("A timm model source needs a model name, e.g. 'resnet18'.")
        if self.kind == "artifact":
            if self.artifact_dir is None:
                raise EngineError("An artifact model source needs artifact_dir.")
            # Accept str from callers that deserialised JSON; the field is documented as Path.
            object.__setattr__(self, "artifact_dir", Path(self.artifact_dir))


@dataclass(frozen=True)
class DatasetSplits:
    class_names: tuple[str, ...]
    train: tuple[tuple[str, int], ...]  # (absolute image path, label index)
    val: tuple[tuple[str, int], ...] = ()
    # Images of the target domain, labels unknown or unused (domain adaptation: dann).
    target: tuple[str, ...] = ()
    # Labelled target-domain images (label index into class_names): dann adds them to its
    # classification loss (semi-supervised adaptation, the article's formula 4.3.1).
    target_labeled: tuple[tuple[str, int], ...] = ()
    # A labelled set scored every epoch and at the end (the job's eval_dataset_id): how a user
    # sees whether adaptation worked on the target domain. Labels index into class_names.
    evaluation: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based over the whole job
    # "train" for finetune, l2sp and l1sp; "probe" for linear_probe; lp_ft: "probe" then "finetune"
    phase: str
    train_loss: float
    val_loss: float
    val_accuracy: float
    learning_rate: float  # the largest in use this epoch (the head's; see backbone_lr_mult)
    images_per_second: float  # training images / training seconds of this epoch (excl. eval)
    seconds: float  # the whole epoch, evaluation included
    # What a strategy reports beside the loss (dann: the domain discriminator's accuracy), each
    # a mean over the epoch's training samples.
    extra: dict[str, float] = field(default_factory=dict)
    # On DatasetSplits.evaluation, when the job has one (None otherwise).
    eval_loss: float | None = None
    eval_accuracy: float | None = None


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    # Classes without validation images are left out: there is no accuracy to report, and NaN
    # does not survive JSON columns.
    per_class_accuracy: dict[str, float]
    confusion_matrix: list[list[int]]  # [true][pred]
    num_samples: int


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild a trained model and preprocess its inputs."""

    # {"library": "timm", "name": "test_resnet", "num_classes": 10}, plus "features" and "head"
    # for a linear_probe model with an MLP head or stage features (see app.engine.heads).
    architecture: dict[str, Any]
    class_names: tuple[str, ...]
    preprocessing: dict[str, Any]  # timm eval data config, JSON-safe (lists, not tuples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": dict(self.architecture),
            "class_names": list(self.class_names),
            "preprocessing": _json_safe(self.preprocessing),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelCard:
        try:
            architecture = dict(d["architecture"])
            class_names = tuple(str(c) for c in d["class_names"])
            preprocessing = _json_safe(dict(d["preprocessing"]))
            if architecture.get("library") != "timm" or not architecture.get("name"):
                raise ValueError(f"unsupported architecture {architecture!r}")
            if int(architecture["num_classes"]) != len(class_names):
                raise ValueError("num_classes does not match class_names")
            if is_probed(architecture):
                check_probe_architecture(architecture)
            if len(preprocessing["input_size"]) != 3:
                raise ValueError("preprocessing.input_size must be [channels, height, width]")
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(
                f"The model card is malformed ({exc}); the artifact was not written by "
                "save_artifact() or has been edited. Re-export the model."
            ) from exc
        return cls(architecture=architecture, class_names=class_names, preprocessing=preprocessing)


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class TrainResult:
    model: torch.nn.Module  # on CPU, eval mode
    card: ModelCard
    history: list[EpochMetrics]
    evaluation: Evaluation  # on the validation split, final model
    train_seconds: float  # strategy run time: feature extraction, training and evaluation
    # What the engine chose where the job left it open: {"augmentation": "light",
    # "kept_epoch": 4} (the epoch whose weights the model holds).
    choices: dict[str, Any] = field(default_factory=dict)
    # On DatasetSplits.evaluation with the final model, when the job has one.
    eval_dataset: Evaluation | None = None
