"""Instance weighting: fine-tuning on the source with each image weighted by how target-like it is.

The article's instance-based transfer (2.2.1): estimate each source image's density ratio
``p_t(x) / p_s(x)`` and minimise the weighted source loss, so source images that resemble the
target count more. The ratio comes from a logistic domain classifier (source vs target) on the
source model's frozen pre-logit features (``app.engine.domain.estimate_density_ratio``), computed
once before training with the evaluation transform; the weights are clipped at ``weight_clip``
times their mean and normalised to mean 1. The job reports their distribution and effective sample
size in ``TrainResult.choices["instance_weights"]``. A resumed job recomputes them (the feature
pass and the estimate are deterministic). The proxy A-distance between source and target
features before and after training is in ``TrainResult.choices["proxy_a_distance"]`` (see
strategies/_adaptation.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from app.engine.data import ImageDataset, Sample, create_eval_transform, create_loader
from app.engine.domain import estimate_density_ratio, weight_summary
from app.engine.errors import EngineError
from app.engine.specs import EpochMetrics, _is_number
from app.engine.strategies._adaptation import (
    measure_pad,
    pad_of_features,
    pad_samples,
    spread,
)
from app.engine.strategies._base import FitContext, FitOutcome
from app.engine.strategies._finetuning import FinetuneOptions, FinetuneTask
from app.engine.strategies._probing import FeatureProgress, extract_features, pre_logits
from app.engine.strategies._registry import register_strategy
from app.engine.trainer import StepOutput, fit_phase


class WeightedImageDataset(ImageDataset):
    """(image, label, weight): the loader batches each image's weight with it."""

    def __init__(self, samples: Sequence[Sample], transform: Any, weights: torch.Tensor) -> None:
        super().__init__(samples, transform)
        self.weights = weights.float()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:  # type: ignore[override]
        image, label = super().__getitem__(index)
        return image, label, self.weights[index]


class WeightedFinetuneTask(FinetuneTask):
    def __init__(self, ctx: FitContext, opts: InstanceWeighting, weights: torch.Tensor) -> None:
        self.weights = weights
        super().__init__(ctx, opts, phase="train")

    def train_dataset(self, ctx: FitContext) -> ImageDataset:
        plain = super().train_dataset(ctx)
        return WeightedImageDataset(plain.samples, plain.transform, self.weights)

    def step(self, batch: Any) -> StepOutput:
        images, targets, weights = batch
        images, targets = self.runtime.to(images), self.runtime.to(targets)
        criterion: Any = self.criterion  # nn.CrossEntropyLoss
        with self.runtime.autocast():
            logits = self.kept(images)
        per_image = F.cross_entropy(
            logits.float(),
            targets,
            weight=criterion.weight,
            label_smoothing=criterion.label_smoothing,
            reduction="none",
        )
        loss = (per_image * self.runtime.to(weights)).mean()
        return StepOutput(loss, targets.shape[0])


def source_and_target_features(ctx: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features of the training images and the target images, eval transform, one
    pass (reported as epoch 0 of on_step, as the probes' feature pass)."""
    model: Any = ctx.model
    hp, runtime = ctx.hparams, ctx.runtime
    samples = [*ctx.train, *((path, 0) for path in ctx.target)]
    loader = create_loader(
        ImageDataset(samples, create_eval_transform(ctx.preprocessing)),
        hp.batch_size,
        device=runtime.device,
        num_workers=ctx.num_workers,
    )
    was_training = model.training
    model.eval()
    features, _ = extract_features(
        pre_logits(model), loader, runtime, FeatureProgress(ctx.callbacks, len(loader))
    )
    model.train(was_training)
    n = len(ctx.train)
    return features[:n], features[n:]


@register_strategy(
    "instance_weighting",
    summary=(
        "fine-tuning on the source with each image weighted by its estimated density ratio "
        "p_target(x)/p_source(x), from a domain classifier on frozen features; needs "
        "target_dataset_id"
    ),
)
@dataclass(frozen=True)
class InstanceWeighting(FinetuneOptions):
    needs_target: ClassVar[bool] = True

    # Largest weight, as a multiple of the mean: bounds the variance a few target-like images
    # bring (the effective sample size in the job's report says what is left).
    weight_clip: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        clip = self.weight_clip
        if not _is_number(clip) or not 1 <= clip <= 1000:
            raise EngineError(f"weight_clip must be a number from 1 to 1000 (got {clip!r}).")

    def fit(self, ctx: FitContext) -> FitOutcome:
        if not ctx.target:
            raise EngineError(
                "instance_weighting needs target-domain images: give the job a target dataset "
                "(target_dataset_id)."
            )
        hp, history = ctx.hparams, list[EpochMetrics]()
        ctx.callbacks.on_train_start(hp.epochs, -(-len(ctx.train) // hp.batch_size))
        source, target = source_and_target_features(ctx)
        weights = estimate_density_ratio(source, target, clip=float(self.weight_clip), seed=hp.seed)
        ctx.choices["instance_weights"] = weight_summary(weights)
        # The proxy A-distance before training, on the features just computed (the subset that
        # is measured after).
        s_rows, t_rows = spread(len(source)), spread(len(target))
        before = pad_of_features(source[s_rows], target[t_rows], seed=hp.seed)
        del source, target
        task = WeightedFinetuneTask(ctx, self, weights)
        result = fit_phase(ctx, task, first_epoch=1, epochs=hp.epochs, history=history)
        pad_source, pad_target = pad_samples(ctx.train, ctx.target)
        ctx.choices["proxy_a_distance"] = {
            "before": before,
            "after": measure_pad(ctx, pad_source, pad_target),
        }
        val = result.val
        return FitOutcome(history, val.predictions, val.targets, evaluation=result.eval)
