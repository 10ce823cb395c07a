"""``run_training``: one job from inputs to a trained model, its card, history and evaluation."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from timm.data import resolve_model_data_config
from torch import nn

from app.engine.callbacks import Callback, CallbackList
from app.engine.data import resolve_augmentation, resolve_preprocessing, split_train_val
from app.engine.errors import EngineError
from app.engine.export import load_artifact
from app.engine.heads import ProbedModel
from app.engine.loop import Runtime, resolve_device, seed_everything
from app.engine.metrics import compute_evaluation
from app.engine.models import create_timm_model, set_input_size
from app.engine.specs import DatasetSplits, Hyperparameters, ModelCard, ModelSource, TrainResult
from app.engine.state import Checkpointer
from app.engine.strategies import FitContext, create_strategy


def build_model(source: ModelSource, num_classes: int) -> tuple[nn.Module, str, dict[str, Any]]:
    """(model with a fresh ``num_classes`` head, architecture name, base eval data config)."""
    if source.kind == "artifact":
        assert source.artifact_dir is not None  # ModelSource validates this
        loaded, card = load_artifact(source.artifact_dir)
        if isinstance(loaded, ProbedModel):
            # The probe's backbone is whole; the new task trains its own head (and features).
            loaded = loaded.backbone
        model: Any = loaded  # timm API (reset_classifier) beyond nn.Module
        # New task, new head; the backbone keeps the source model's weights.
        model.reset_classifier(num_classes)
        # The source was trained (and its features learnt) with the card's preprocessing.
        return model, card.architecture["name"], dict(card.preprocessing)
    model = create_timm_model(source.name, num_classes, pretrained=source.pretrained)
    return model, source.name, dict(resolve_model_data_config(model=model))


def check_job(strategy: str, options: Mapping[str, Any], hparams: Hyperparameters) -> None:
    """Everything about a job spec that can be checked without a model or data (the API calls
    this before accepting a job). Raises EngineError."""
    create_strategy(strategy, **dict(options)).check(hparams)


def check_labels(data: DatasetSplits) -> None:
    """The labelled target images and the eval set must use the job's class indices."""
    n = len(data.class_names)
    for name, samples in (("target_labeled", data.target_labeled), ("evaluation", data.evaluation)):
        bad = [label for _, label in samples if not 0 <= label < n]
        if bad:
            raise EngineError(
                f"The {name} images have labels outside the job's {n} classes (e.g. {bad[0]}); "
                "map their class names onto the training dataset's first."
            )


def run_training(
    *,
    source: ModelSource,
    strategy: str,
    data: DatasetSplits,
    hparams: Hyperparameters,
    strategy_options: Mapping[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
    device: str = "auto",
    num_workers: int = 0,
    checkpoint_dir: Path | None = None,
    checkpoint_interval_s: float | None = None,
) -> TrainResult:
    """Train a classifier for ``data.class_names`` and return it on CPU in eval mode.

    With ``checkpoint_dir``, the training state is saved there after every epoch of an
    image-training phase (finetune, l2sp, l1sp, lp_ft's second phase) and, with
    ``checkpoint_interval_s``, also inside an epoch once that many seconds have passed since the
    last save; a run that finds a
    state there continues from it: on CPU with loader workers 0 the per-epoch metrics are those
    of an uninterrupted run (with loader workers, the workers' augmentation streams restart). A
    linear_probe job saves nothing: it repeats its deterministic feature pass, the bulk of its
    time, whatever is saved.

    Cheap checks (strategy and options, device, splits) run before any model is built, so a bad
    job fails in milliseconds. Raises ``EngineError`` with a user-facing message, or
    ``TrainingCancelled`` when a callback's ``should_stop()`` returns True.
    """
    plan = create_strategy(strategy, **dict(strategy_options or {}))
    plan.check(hparams)
    if not isinstance(num_workers, int) or num_workers < 0:
        raise EngineError(f"num_workers must be an integer >= 0 (got {num_workers!r}).")
    runtime = Runtime.on(resolve_device(device), amp=hparams.amp, channels_last=True)
    train, val = split_train_val(data, hparams.val_fraction, hparams.seed)
    num_classes = len(data.class_names)
    check_labels(data)
    if data.target_labeled and not plan.uses_target_labeled:
        raise EngineError(
            f"{strategy} does not use labelled target images; give them to a dann job "
            "(semi-supervised adaptation) or add them to the training dataset."
        )

    # Seed before the model is built: head initialisation draws from torch's RNG.
    seed_everything(hparams.seed)
    model, arch_name, base_cfg = build_model(source, num_classes)
    preprocessing = resolve_preprocessing(base_cfg, hparams.image_size)
    augmentation = resolve_augmentation(hparams.augmentation, train, preprocessing["input_size"])
    hparams = hparams.model_copy(update={"augmentation": augmentation})
    set_input_size(model, base_cfg["input_size"], preprocessing["input_size"])
    if runtime.device.type == "cuda":
        # Fixed input sizes: let cuDNN pick the fastest kernels once (not bitwise reproducible
        # on GPU; CPU runs are).
        torch.backends.cudnn.benchmark = True
    runtime.place_model(model)

    checkpointer = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    ctx = FitContext(
        model=model,
        class_names=tuple(data.class_names),
        train=train,
        val=val,
        preprocessing=preprocessing,
        hparams=hparams,
        runtime=runtime,
        callbacks=CallbackList(callbacks),
        num_workers=num_workers,
        checkpointer=checkpointer,
        resume=checkpointer.latest() if checkpointer is not None else None,
        checkpoint_interval_s=checkpoint_interval_s,
        target=tuple(data.target),
        target_labeled=tuple(data.target_labeled),
        evaluation=tuple(data.evaluation),
        choices={"augmentation": augmentation},
    )
    start = time.perf_counter()
    try:
        outcome = plan.fit(ctx)
    finally:
        # Also on failure and cancellation, even while a traceback still references this model.
        runtime.release_model(model)
    train_seconds = time.perf_counter() - start

    evaluation = compute_evaluation(outcome.val_predictions, outcome.val_targets, data.class_names)
    scored = outcome.evaluation
    eval_dataset = (
        compute_evaluation(scored.predictions, scored.targets, data.class_names)
        if scored is not None
        else None
    )
    trained = outcome.model if outcome.model is not None else model
    runtime.release_model(trained)  # a probe's new head, beside the released backbone
    # Strategies freeze parameters; the returned model is a plain one.
    trained.requires_grad_(True)
    trained.eval()
    card = ModelCard(
        architecture={
            "library": "timm",
            "name": arch_name,
            "num_classes": num_classes,
            **outcome.architecture,
        },
        class_names=tuple(data.class_names),
        preprocessing=preprocessing,
    )
    return TrainResult(
        model=trained,
        card=card,
        history=list(outcome.history),
        evaluation=evaluation,
        train_seconds=train_seconds,
        choices=dict(ctx.choices),
        eval_dataset=eval_dataset,
    )
