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

import time
from collections.abc import Callable
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
from app.engine.early_stopping import EarlyStopping
from app.engine.errors import EngineError
from app.engine.loop import (
    EvalStats,
    Runtime,
    check_finite,
    create_criterion,
    evaluate_logits,
)
from app.engine.optim import create_optimizer, lr_factor, set_epoch_lr
from app.engine.specs import EpochMetrics
from app.engine.strategies._base import FitContext


@dataclass(frozen=True)
class Features:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


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
    """One pass over train + val with the eval transform, reported as epoch 0 of on_step.

    NOTE one loader over both splits, not one each: a loader with workers forks and warms up its
    worker processes, so this pays that once per job; the split is a slice of the cached tensors.
    """
    hp, runtime = ctx.hparams, ctx.runtime
    loader = create_loader(
        ImageDataset((*ctx.train, *ctx.val), create_eval_transform(ctx.preprocessing)),
        hp.batch_size,
        device=runtime.device,
        num_workers=ctx.num_workers,
    )
    progress = FeatureProgress(ctx.callbacks, len(loader))
    x, y = extract_features(features, loader, runtime, progress)
    n = len(ctx.train)
    return Features(x[:n], y[:n], x[n:], y[n:])


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


def run_probe_phase(
    ctx: FitContext,
    head: nn.Module,
    feats: Features,
    *,
    phase: str,
    first_epoch: int,
    epochs: int,
    history: list[EpochMetrics],
) -> tuple[EvalStats, int]:
    """Train ``head`` on cached features; (validation of the head it leaves, epochs run)."""
    with ctx.runtime.small_ops():
        hp, runtime, callbacks = ctx.hparams, ctx.runtime, ctx.callbacks
        n_train = feats.train_x.shape[0]
        steps_per_epoch = head_steps_per_epoch(ctx)
        optimizer = create_optimizer(head.parameters(), hp)
        labels = feats.train_y.tolist()
        criterion = create_criterion(hp, labels, len(ctx.class_names), runtime.device)
        clip_params = [p for p in head.parameters() if p.requires_grad]
        stopper = EarlyStopping(head, hp)
        # CPU generator: one seeded draw of indices per epoch, independent of the device.
        generator = torch.Generator().manual_seed(hp.seed)
        weights = None
        if hp.sampler == "balanced":
            weights = balanced_sample_weights(feats.train_y.tolist())
        val = None
        ran = 0
        for index in range(1, epochs + 1):
            epoch = first_epoch + index - 1
            start = time.perf_counter()
            lr = set_epoch_lr(optimizer, lr_factor(index, epochs, hp))
            head.train()
            if weights is None:
                order = torch.randperm(n_train, generator=generator)
            else:
                order = torch.multinomial(weights, n_train, replacement=True, generator=generator)
            order = order.to(runtime.device)
            loss_sum = torch.zeros((), device=runtime.device)
            for step, first in enumerate(range(0, n_train, hp.batch_size), 1):
                idx = order[first : first + hp.batch_size]
                loss = criterion(head(feats.train_x[idx]), feats.train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if hp.grad_clip_norm is not None:
                    nn.utils.clip_grad_norm_(clip_params, hp.grad_clip_norm, foreach=True)
                optimizer.step()
                loss_sum.add_(loss.detach(), alpha=idx.numel())
                callbacks.step(epoch, step, steps_per_epoch)
            train_loss = loss_sum.item() / n_train
            train_seconds = time.perf_counter() - start
            check_finite(train_loss, epoch)
            head.eval()
            with torch.inference_mode():
                val = evaluate_logits(head(feats.val_x), feats.val_y)
            metrics = EpochMetrics(
                epoch=epoch,
                phase=phase,
                train_loss=train_loss,
                val_loss=val.loss,
                val_accuracy=val.accuracy,
                learning_rate=lr,
                images_per_second=n_train / train_seconds if train_seconds > 0 else 0.0,
                seconds=time.perf_counter() - start,
            )
            history.append(metrics)
            callbacks.on_epoch_end(metrics)
            ran = index
            if stopper.update(metrics, val):
                break
        assert val is not None  # epochs >= 1
        kept = stopper.restore(val)
        ctx.choices["kept_epoch"] = stopper.best_epoch or history[-1].epoch
        return kept, ran
