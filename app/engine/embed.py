"""Feature extraction as a job of its own: a backbone run over a dataset, its embeddings kept.

Users take the embeddings to their own tools (a nearest-neighbour index, scikit-learn, a
notebook). The features are exactly those a ``linear_probe`` with the same ``features`` option
trains on: the pooled pre-logits, or an intermediate stage average-pooled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from app.engine.callbacks import Callback, CallbackList
from app.engine.data import (
    ImageDataset,
    check_splits,
    create_eval_transform,
    create_loader,
    resolve_preprocessing,
)
from app.engine.errors import EngineError
from app.engine.heads import ProbedModel, check_stage, parse_features
from app.engine.loop import Runtime, resolve_device, seed_everything
from app.engine.models import set_input_size
from app.engine.specs import DatasetSplits, ModelSource
from app.engine.strategies._probing import FeatureProgress, extract_features
from app.engine.train import build_model

FEATURE_JOB = "extract_features"
FEATURE_JOB_OPTIONS = ["features"]


@dataclass(frozen=True)
class Embeddings:
    features: np.ndarray  # (N, D) float32, one row per image, train rows then val rows
    samples: tuple[tuple[str, int], ...]  # (path, label index) per row
    splits: tuple[str, ...]  # "train" or "val" per row
    class_names: tuple[str, ...]
    architecture: str
    feature_layer: str
    preprocessing: dict[str, Any]


def extract_embeddings(
    *,
    source: ModelSource,
    data: DatasetSplits,
    features: str = "pre_logits",
    image_size: int | None = None,
    batch_size: int = 64,
    callbacks: Sequence[Callback] = (),
    device: str = "auto",
    num_workers: int = 0,
    amp: bool = True,
    seed: int = 0,
) -> Embeddings:
    """Embed every image of ``data`` (train and val) with the source backbone, eval transform."""
    check_splits(data)
    try:
        stage = parse_features(features)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    runtime = Runtime.on(resolve_device(device), amp=amp, channels_last=True)
    # A random-init backbone (pretrained=false) must embed the same way on every run.
    seed_everything(seed)
    model: Any
    model, arch_name, base_cfg = build_model(source, len(data.class_names))
    preprocessing = resolve_preprocessing(base_cfg, image_size)
    set_input_size(model, base_cfg["input_size"], preprocessing["input_size"])
    if stage is not None:
        check_stage(model, stage)
    model.requires_grad_(False)
    model.eval()
    runtime.place_model(model)
    samples = (*data.train, *data.val)
    loader = create_loader(
        ImageDataset(samples, create_eval_transform(preprocessing)),
        batch_size,
        device=runtime.device,
        num_workers=num_workers,
    )
    cbs = CallbackList(callbacks)
    cbs.on_train_start(1, len(loader))
    try:
        x, _ = extract_features(
            ProbedModel(model, nn.Identity(), stage).forward_features,
            loader,
            runtime,
            FeatureProgress(cbs, len(loader), epoch=1),
        )
    finally:
        runtime.release_model(model)
    return Embeddings(
        features=x.cpu().numpy().astype(np.float32, copy=False),
        samples=tuple(samples),
        splits=("train",) * len(data.train) + ("val",) * len(data.val),
        class_names=tuple(data.class_names),
        architecture=arch_name,
        feature_layer=features,
        preprocessing=preprocessing,
    )
