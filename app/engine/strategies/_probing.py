"""What linear_probe and lp_ft share: features computed once, and a head trained on them.

NOTE the backbone is frozen and in eval mode, so its features for an image never change: one
forward pass over train + val, cached as a (N, C) tensor on the job's device, replaces a pass per
epoch. A head step is then one small matmul with its backward and a fused optimizer step, run on
one CPU thread (``Runtime.small_ops``): 0.3-0.7 ms of eager PyTorch overhead on 2 CPU cores, so
30 epochs over 4,000 images at batch 64 cost ~0.6-1.4 s, against 2.6 s for one pass of the tiny
test_resnet over them at 32 px and 12.6 s for resnet10t at 64 px (bench/speed.py). Features are
taken with the eval transform: augmentation would make them differ per epoch and defeat the
cache, so the job's ``augmentation`` does not apply here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from app.engine.callbacks import CallbackList
from app.engine.data import (
    ImageDataset,
    balanced_sample_weights,
    create_eval_transform,
    create_loader,
)
from app.engine.errors import EngineError
from app.engine.loop import EvalStats, Runtime, create_criterion, evaluate_logits
from app.engine.optim import create_optimizer
from app.engine.specs import EpochMetrics
from app.engine.strategies._base import FitContext
from app.engine.trainer import PhaseResult, StepOutput, TrainingTask, fit_phase


@dataclass(frozen=True)
class Features:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    # The job's eval set (FitContext.evaluation), empty without one.
    eval_x: torch.Tensor
    eval_y: torch.Tensor


class FeatureProgress:
    """Counts feature batches for on_step(epoch, ...): epoch 0 in probes (before the head's
    epochs), epoch 1 of 1 in a feature-extraction job."""

    def __init__(self, callbacks: CallbackList, total: int, epoch: int = 0) -> None:
        self.callbacks, self.total, self.epoch, self.done = callbacks, total, epoch, 0

    def step(self) -> None:
        self.done += 1
        self.callbacks.step(self.epoch, self.done, self.total)


def own_classifier(model: Any) -> nn.Module:
    head = model.get_classifier()
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise EngineError(
            "This model has no single trainable classifier layer, so it cannot be linearly "
            "probed; use the finetune strategy."
        )
    return head


def pre_logits(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The pooled pre-logit features of a timm model: what its classifier sees."""

    def features(images: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(images), pre_logits=True)

    return features


def head_steps_per_epoch(ctx: FitContext) -> int:
    return -(-len(ctx.train) // ctx.hparams.batch_size)


def extract_all(ctx: FitContext, features: Callable[[torch.Tensor], torch.Tensor]) -> Features:
    """One pass over train + val (+ the eval set) with the eval transform, reported as epoch 0 of
    on_step.

    NOTE one loader over both splits, not one each: a loader with workers forks and warms up its
    worker processes, so this pays that once per job; the split is a slice of the cached tensors.
    The eval set's batches start after the last train + val batch, never inside it: a backbone
    on the CPU can give features that differ in the last bits for a batch of another size, and
    with the eval set's images in the last batch the val loss of a job changed (seen on one
    machine, 2.3008167 against 2.3008169, in tests/engine/test_eval_set.py).
    """
    hp, runtime = ctx.hparams, ctx.runtime
    v = len(ctx.train) + len(ctx.val)
    total = v + len(ctx.evaluation)
    batches = [
        list(range(first, min(first + hp.batch_size, end)))
        for start, end in ((0, v), (v, total))
        for first in range(start, end, hp.batch_size)
    ]
    loader = create_loader(
        ImageDataset(
            (*ctx.train, *ctx.val, *ctx.evaluation), create_eval_transform(ctx.preprocessing)
        ),
        hp.batch_size,
        device=runtime.device,
        num_workers=ctx.num_workers,
        batch_sampler=batches,  # type: ignore[arg-type]  # a list of index lists is iterable
    )
    progress = FeatureProgress(ctx.callbacks, len(loader))
    x, y = extract_features(features, loader, runtime, progress)
    n = len(ctx.train)
    return Features(x[:n], y[:n], x[n:v], y[n:v], x[v:], y[v:])


def extract_features(
    features: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    runtime: Runtime,
    progress: FeatureProgress,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``features(images)`` for every batch, and the labels, on runtime.device."""
    out: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    with torch.inference_mode():
        for images, targets in loader:
            images = runtime.to(images)
            with runtime.autocast():
                feats = features(images)
            out.append(feats.float())
            labels.append(runtime.to(targets))
            progress.step()
    # Concatenating outside inference_mode yields ordinary tensors, which autograd may save for
    # the head's backward (inference tensors may not be).
    return torch.cat(out), torch.cat(labels)


class FeatureBatches:
    """Batches of indices into the cached training features: one seeded draw per epoch, a
    shuffle or (``weights``) a class-balanced sample with replacement. A CPU generator, so the
    order does not depend on the device."""

    def __init__(
        self, n: int, batch_size: int, *, seed: int, device: torch.device, weights=None
    ) -> None:
        self.n, self.batch_size, self.device, self.weights = n, batch_size, device, weights
        self.generator = torch.Generator().manual_seed(seed)

    def generators(self) -> dict[str, torch.Generator]:
        return {"loader": self.generator}

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def epoch(self, skip: int = 0) -> Iterator[torch.Tensor]:
        if self.weights is None:
            order = torch.randperm(self.n, generator=self.generator)
        else:
            order = torch.multinomial(
                self.weights, self.n, replacement=True, generator=self.generator
            )
        order = order.to(self.device)
        for first in range(skip * self.batch_size, self.n, self.batch_size):
            yield order[first : first + self.batch_size]


class ProbeTask(TrainingTask):
    """A head trained on cached features. Not saved: its epochs take about a second in all, and
    a resumed job recomputes the features it needs first anyway."""

    saved = False

    def __init__(self, ctx: FitContext, head: nn.Module, feats: Features, *, phase: str) -> None:
        hp, runtime = ctx.hparams, ctx.runtime
        self.phase, self.kept, self.feats = phase, head, feats
        self.optimizer = create_optimizer(head.parameters(), hp)
        self.criterion = create_criterion(
            hp, feats.train_y.tolist(), len(ctx.class_names), runtime.device
        )
        weights = None
        if hp.sampler == "balanced":
            weights = balanced_sample_weights(feats.train_y.tolist())
        self.batches = FeatureBatches(
            feats.train_x.shape[0],
            hp.batch_size,
            seed=hp.seed,
            device=runtime.device,
            weights=weights,
        )

    def step(self, batch: torch.Tensor) -> StepOutput:
        feats = self.feats
        return StepOutput(self.criterion(self.kept(feats.train_x[batch]), feats.train_y[batch]),
                          batch.numel())  # fmt: skip

    def evaluate(self) -> EvalStats:
        self.kept.eval()
        with torch.inference_mode():
            return evaluate_logits(self.kept(self.feats.val_x), self.feats.val_y)

    def score_eval(self) -> EvalStats | None:
        if not len(self.feats.eval_y):
            return None
        self.kept.eval()
        with torch.inference_mode():
            return evaluate_logits(self.kept(self.feats.eval_x), self.feats.eval_y)


def fit_probe(
    ctx: FitContext,
    head: nn.Module,
    feats: Features,
    *,
    phase: str,
    first_epoch: int,
    epochs: int,
    history: list[EpochMetrics],
) -> PhaseResult:
    """Train ``head`` on cached features, its small ops on one CPU thread."""
    with ctx.runtime.small_ops():
        task = ProbeTask(ctx, head, feats, phase=phase)
        return fit_phase(ctx, task, first_epoch=first_epoch, epochs=epochs, history=history)
