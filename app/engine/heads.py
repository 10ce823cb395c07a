"""Probe heads: which backbone features a linear_probe reads, and what it trains on them.

A probe on the backbone's pre-logits with a linear head is the timm model itself with its
classifier trained, and saves as one. Any other probe (an MLP head, or features from an
intermediate stage) is a ``ProbedModel``: the timm backbone with its classifier removed, and the
trained head. Its model card records the choice, so ``load_artifact`` rebuilds the same module
and ``predict`` runs it end to end:

    "architecture": {"library": "timm", "name": "resnet50", "num_classes": 10,
                     "features": "stage:2",
                     "head": {"type": "mlp", "in_features": 512, "hidden": 256, "dropout": 0.1}}

The backbone is kept whole (not pruned after the stage) so that the artifact remains a valid
source for further jobs, which train a new head on the backbone; prediction still runs only up
to the stage (``stop_early``).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from app.engine.errors import EngineError

HEADS = ("linear", "mlp")
PRE_LOGITS = "pre_logits"


def parse_features(spec: object) -> int | None:
    """``"pre_logits"`` -> None, ``"stage:<i>"`` -> i (0-based index into feature_info)."""
    if spec == PRE_LOGITS:
        return None
    if isinstance(spec, str) and spec.startswith("stage:"):
        index = spec[len("stage:") :]
        # ASCII digits only: str.isdigit() is also true of "²" and of other scripts' digits.
        if index.isascii() and index.isdigit() and len(index) <= 3:
            return int(index)
    raise ValueError(
        f"features must be 'pre_logits' or 'stage:<i>' with i a stage index >= 0 (got {spec!r})"
    )


def create_head(
    kind: str, in_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0
) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
    return nn.Linear(in_features, num_classes)


class ProbedModel(nn.Module):
    """A timm backbone read at one stage (globally average-pooled) or at its pre-logits, and a
    head on those features. ``forward`` maps images to logits like any classifier."""

    def __init__(self, backbone: nn.Module, head: nn.Module, stage: int | None) -> None:
        super().__init__()
        self.backbone: Any = backbone  # timm API (forward_intermediates, forward_head)
        self.head = head
        self.stage = stage
        intermediates = getattr(backbone, "forward_intermediates", None)
        self._stop_early = (
            stage is not None
            and intermediates is not None
            and "stop_early" in inspect.signature(intermediates).parameters
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) features: what the head sees."""
        if self.stage is None:
            return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
        kwargs = {"stop_early": True} if self._stop_early else {}
        (fmap,) = self.backbone.forward_intermediates(
            x, indices=[self.stage], intermediates_only=True, **kwargs
        )
        return fmap.mean(dim=(2, 3))  # NCHW, timm's default output format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head


def check_stage(model: nn.Module, stage: int) -> None:
    """Raise EngineError unless ``model`` can give features of ``stage``."""
    stages = [info["module"] for info in getattr(model, "feature_info", None) or []]
    if not hasattr(model, "forward_intermediates") or not stages:
        raise EngineError(
            "This model cannot return intermediate features (no forward_intermediates), so "
            "features='stage:<i>' cannot be used with it; use features='pre_logits'."
        )
    if stage >= len(stages):
        listed = ", ".join(f"{i}={name}" for i, name in enumerate(stages))
        raise EngineError(
            f"features='stage:{stage}' but the model has {len(stages)} stages ({listed}); use "
            f"a stage from 0 to {len(stages) - 1}."
        )


def probe_architecture(
    kind: str, in_features: int, hidden: int, dropout: float, stage: int | None
) -> dict[str, Any]:
    """The card's ``architecture`` entries for a ProbedModel."""
    head: dict[str, Any] = {"type": kind, "in_features": in_features}
    if kind == "mlp":
        head.update(hidden=hidden, dropout=dropout)
    return {"features": PRE_LOGITS if stage is None else f"stage:{stage}", "head": head}


def is_probed(architecture: Mapping[str, Any]) -> bool:
    return "head" in architecture or "features" in architecture


def check_probe_architecture(architecture: Mapping[str, Any]) -> None:
    """Raise ValueError when a card's probe entries are malformed."""
    parse_features(architecture.get("features"))
    head = architecture.get("head")
    if not isinstance(head, Mapping) or head.get("type") not in HEADS:
        raise ValueError(f"head must be an object with type one of {', '.join(HEADS)}")
    keys = ("in_features", "hidden") if head["type"] == "mlp" else ("in_features",)
    for key in keys:
        if not isinstance(head.get(key), int) or head[key] < 1:
            raise ValueError(f"head.{key} must be an integer >= 1")
    if head["type"] == "mlp" and not isinstance(head.get("dropout"), (int, float)):
        raise ValueError("head.dropout must be a number")


def build_probed_model(backbone: Any, architecture: Mapping[str, Any]) -> ProbedModel:
    """The module a card with probe entries describes, around a freshly built timm backbone."""
    head = architecture["head"]
    backbone.reset_classifier(0)
    module = create_head(
        head["type"],
        int(head["in_features"]),
        int(architecture["num_classes"]),
        int(head.get("hidden", 0)),
        float(head.get("dropout", 0.0)),
    )
    return ProbedModel(backbone, module, parse_features(architecture["features"]))
