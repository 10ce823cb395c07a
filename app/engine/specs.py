"""Frozen inputs and plain outputs of the engine.

The worker builds these from database rows; the engine never reads the environment. Inputs
validate themselves on construction so a bad job fails before any model is built, with an
``EngineError`` message that can be shown to the user as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.engine.errors import EngineError

OPTIMIZERS = ("adamw", "adam", "sgd")
SOURCE_KINDS = ("timm", "artifact")


def _is_int(value: object) -> bool:
    # bool is an int subclass; "epochs": true is a client bug, not 1 epoch.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adamw"  # "adamw" | "adam" | "sgd" (sgd uses momentum)
    weight_decay: float = 0.0
    momentum: float = 0.9
    image_size: int | None = None  # None -> the backbone's default input size
    val_fraction: float = 0.2  # used only when DatasetSplits.val is empty
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not _is_int(self.epochs) or self.epochs < 1:
            problems.append(f"epochs must be an integer >= 1 (got {self.epochs!r})")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            problems.append(f"batch_size must be an integer >= 1 (got {self.batch_size!r})")
        if not _is_number(self.learning_rate) or self.learning_rate <= 0:
            problems.append(f"learning_rate must be a number > 0 (got {self.learning_rate!r})")
        if self.optimizer not in OPTIMIZERS:
            problems.append(
                f"optimizer must be one of {', '.join(OPTIMIZERS)} (got {self.optimizer!r})"
            )
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            problems.append(f"weight_decay must be a number >= 0 (got {self.weight_decay!r})")
        if not _is_number(self.momentum) or not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1) (got {self.momentum!r})")
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 8):
            problems.append(f"image_size must be an integer >= 8 or null (got {self.image_size!r})")
        if not _is_number(self.val_fraction) or not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction must be between 0 and 1 (got {self.val_fraction!r})")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            problems.append(f"seed must be an integer >= 0 (got {self.seed!r})")
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
    phase: str  # "train" for finetune, "probe" for linear_probe
    train_loss: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
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

    architecture: dict[str, Any]  # {"library": "timm", "name": "test_resnet", "num_classes": 10}
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
