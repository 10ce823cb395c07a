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
from typing import Any

import torch

from app.engine.errors import EngineError
from app.engine.heads import check_probe_architecture, is_probed

OPTIMIZERS = ("adamw", "adam", "sgd")
SOURCE_KINDS = ("timm", "artifact")
EARLY_STOPPING_METRICS = ("val_loss", "val_accuracy")
CLASS_WEIGHTINGS = ("none", "balanced")
SAMPLERS = ("shuffle", "balanced")
AUGMENTATIONS = ("auto", "default", "none", "light", "strong")
SCHEDULERS = ("constant", "cosine", "step")
# A cap on batch_size x image_size^2: 2^26 pixels is a batch of 256 at 512 px or 1,365 at 224 px,
# whose fp32 input alone is 0.8 GB and a ResNet-50's training activations some 30 times that.
# Larger batches cannot fit a worker; refusing them at submit time beats an out-of-memory kill.
MAX_BATCH_PIXELS = 2**26


def _is_int(value: object) -> bool:
    # bool is an int subclass; "epochs": true is a client bug, not 1 epoch.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(problems: list[str], name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        problems.append(f"{name} must be one of {', '.join(choices)} (got {value!r})")


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


@dataclass(frozen=True)
class Hyperparameters:
    """Job-wide training settings; every strategy honours them (exceptions noted per field).

    The API's pydantic ``Hyperparameters`` mirrors these fields, defaults and bounds; a test
    asserts that the two agree. Defaults reproduce the engine's behaviour before each field
    existed, except ``amp``, which was always on.
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adamw"  # "adamw" | "adam" | "sgd" (sgd uses momentum)
    weight_decay: float = 0.0
    momentum: float = 0.9
    image_size: int | None = None  # None -> the backbone's default input size
    val_fraction: float = 0.2  # used only when DatasetSplits.val is empty
    seed: int = 0
    # Stop after this many epochs without improvement of early_stopping_metric and return the
    # model of the best epoch (its weights, BatchNorm statistics and evaluation). None: train all
    # epochs and return the last one.
    early_stopping_patience: int | None = None
    early_stopping_metric: str = "val_loss"  # "val_loss" (lower is better) | "val_accuracy"
    # "balanced": cross-entropy weights n / (classes * n_c) from the training split, as
    # scikit-learn's class_weight="balanced". train_loss is then the weighted loss; val_loss
    # stays the plain cross-entropy so that it compares across jobs.
    class_weighting: str = "none"  # "none" | "balanced"
    # "balanced": each epoch draws len(train) samples with replacement, every class equally
    # likely. Seeded like shuffling.
    sampler: str = "shuffle"  # "shuffle" | "balanced"
    # Training transform (ignored where features are cached: linear_probe, lp_ft's probe):
    # "default" timm's train transform, "none" the eval transform, "light" a 60-100% random
    # resized crop without flips or colour jitter (digits, text), "strong" timm RandAugment.
    # "auto" (the default) picks timm's ImageNet policy only where it fits: photos of at least
    # AUTO_MIN_SIDE pixels for an input of at least that size; "light" otherwise (its
    # RandomResizedCrop down to 8% of the area destroys small images: a 6-epoch digits finetune
    # at 32 px reached 0.605 with it and 0.915 with "light"). TrainResult.choices says which.
    augmentation: str = "auto"  # "auto" | "default" | "none" | "light" | "strong"
    label_smoothing: float = 0.0
    # The learning rate is set once per epoch (EpochMetrics.learning_rate is the one used): warm-up
    # epochs ramp linearly, lr * e / (warmup_epochs + 1) in epoch e, then "cosine" anneals towards
    # 0 over the remaining epochs (never reaching it in a trained epoch) and "step" multiplies by
    # gamma every step_size epochs. A job with two phases (lp_ft) runs the schedule in each.
    scheduler: str = "constant"  # "constant" | "cosine" | "step"
    warmup_epochs: int = 0
    step_size: int = 10  # "step" only
    gamma: float = 0.1  # "step" only
    grad_clip_norm: float | None = None  # clip the global gradient L2 norm to this
    # bfloat16 autocast on CUDA devices that support it (compute capability >= 8.0); False runs
    # fp32 there. CPU runs are always fp32: CPU autocast is slower for most backbones.
    amp: bool = True
    # Return the epoch with the best early_stopping_metric on the validation split, not the last
    # one, also without early_stopping_patience (which, when set, also stops the run).
    keep_best: bool = True

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not _is_int(self.epochs) or self.epochs < 1:
            problems.append(f"epochs must be an integer >= 1 (got {self.epochs!r})")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            problems.append(f"batch_size must be an integer >= 1 (got {self.batch_size!r})")
        if not _is_number(self.learning_rate) or self.learning_rate <= 0:
            problems.append(f"learning_rate must be a number > 0 (got {self.learning_rate!r})")
        _choice(problems, "optimizer", self.optimizer, OPTIMIZERS)
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"weight_decay must be a number >= 0 (got {self.weight_decay!r})")
        if not _is_number(self.momentum) or not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1) (got {self.momentum!r})")
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 8):
            problems.append(f"image_size must be an integer >= 8 or null (got {self.image_size!r})")
        elif _is_int(self.batch_size) and self.image_size is not None:
            problems += check_batch_memory(self.batch_size, self.image_size)
        if not _is_number(self.val_fraction) or not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction must be between 0 and 1 (got {self.val_fraction!r})")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            problems.append(f"seed must be an integer >= 0 (got {self.seed!r})")
        patience = self.early_stopping_patience
        if patience is not None and (not _is_int(patience) or patience < 1):
            problems.append(
                f"early_stopping_patience must be an integer >= 1 or null (got {patience!r})"
            )
        _choice(
            problems, "early_stopping_metric", self.early_stopping_metric, EARLY_STOPPING_METRICS
        )
        _choice(problems, "class_weighting", self.class_weighting, CLASS_WEIGHTINGS)
        _choice(problems, "sampler", self.sampler, SAMPLERS)
        _choice(problems, "augmentation", self.augmentation, AUGMENTATIONS)
        if not _is_number(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1) (got {self.label_smoothing!r})")
        _choice(problems, "scheduler", self.scheduler, SCHEDULERS)
        if not _is_int(self.warmup_epochs) or self.warmup_epochs < 0:
            problems.append(f"warmup_epochs must be an integer >= 0 (got {self.warmup_epochs!r})")
        elif _is_int(self.epochs) and self.warmup_epochs >= self.epochs:
            problems.append(
                f"warmup_epochs must be less than epochs (got {self.warmup_epochs} of "
                f"{self.epochs!r}): the learning rate would never reach its value"
            )
        if not _is_int(self.step_size) or self.step_size < 1:
            problems.append(f"step_size must be an integer >= 1 (got {self.step_size!r})")
        if not _is_number(self.gamma) or not 0 < self.gamma <= 1:
            problems.append(f"gamma must be in (0, 1] (got {self.gamma!r})")
        clip = self.grad_clip_norm
        if clip is not None and (not _is_number(clip) or clip <= 0):
            problems.append(f"grad_clip_norm must be a number > 0 or null (got {clip!r})")
        if not isinstance(self.amp, bool):
            problems.append(f"amp must be true or false (got {self.amp!r})")
        if not isinstance(self.keep_best, bool):
            problems.append(f"keep_best must be true or false (got {self.keep_best!r})")
        if problems:
            raise EngineError("Invalid hyperparameters: " + "; ".join(problems) + ".")


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
